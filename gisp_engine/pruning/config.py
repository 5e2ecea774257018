"""Settings of a pruning run, each declared once, with validation that explains every refusal.

Every setting of :class:`PruneConfig` is a field with an :class:`Option`: its type and default (the field's),
its help, the Run page's label, and what it accepts (choices, a least whole number, a fraction, what ``None``
means). ``PruneConfig.validate`` checks every option against its declaration; ``gisp prune``'s flags
(``add_arguments``) and the Run page's widgets (``explorer_ui.option_input``) are made from the same
declarations, so a new setting is one field here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields

from ..core import registry, settings
from ..core.errors import GispError
from ..data.text import BOS_POLICIES, BOS_POLICY_HELP, SAMPLINGS
from ..model.structures import GQA_POLICIES, NORMALIZATIONS

SCHEDULES = ("linear", "cosine")


#: Pruning methods: iterative GISP, and the fixed-ranking baselines (``gisp_engine.pruning.methods``).
METHODS = registry.METHODS.names()


@dataclass(frozen=True)
class Option:
    """How one setting is asked for and checked (its type and default are its field's).

    ``choices``: the values accepted (a callable when they are found at run time); ``minimum``: a whole number at
    least this; ``fraction``: a number strictly between 0 and 1; ``unset``: what ``None`` (the default) means, in
    words; ``what``: the setting's name in an error message; ``step``: the Run page's increment.
    """

    help: str
    label: str
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None
    minimum: int | None = None
    fraction: bool = False
    unset: str | None = None
    what: str | None = None
    step: float | None = None
    metavar: str | None = None

    def allowed(self) -> tuple[str, ...] | None:
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def check(self, name: str, kind: str, value) -> None:
        """Refuse ``value`` of the setting ``name`` (of type ``kind``: int, float, str or bool) in one line."""
        flag = "--" + name.replace("_", "-")
        if value is None and self.unset is not None:
            return
        if kind == "int":
            low = self.minimum
            if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
                at_least = f" of at least {low}" if low is not None else ""
                raise GispError(f"{flag} must be a whole number{at_least}, got {value!r}")
        if self.fraction and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not 0 < value < 1
        ):
            raise GispError(f"{flag} must be a fraction between 0 and 1 (exclusive), got {value!r}")
        if kind == "bool" and not isinstance(value, bool):
            raise GispError(f"{flag} must be true or false, got {value!r}")
        allowed = self.allowed()
        if allowed is not None and value not in allowed:
            raise GispError(f"unknown {self.what or name} {value!r}: choose one of {', '.join(allowed)}")


def option(default, help: str, label: str, **how):
    """A field of ``PruneConfig`` declared with its :class:`Option`."""
    return field(default=default, metadata={"option": Option(help=help, label=label, **how)})


@dataclass
class PruneConfig:
    model: str = option(
        settings.DEFAULT_MODEL,
        f"{settings.DEFAULT_MODEL} (embedded), a model folder, or a hub id",
        "Model",
    )
    method: str = option(
        "gisp",
        "gisp re-scores at every step; the baselines rank once on the dense model: "
        + ", ".join(m for m in METHODS if m != "gisp"),
        "Method",
        choices=METHODS,
        what="method",
    )
    objective: str = option(
        "perplexity",
        "the loss whose gradient scores the structures",
        "Objective",
        choices=registry.OBJECTIVES.names,
        what="objective",
    )
    calib: str = option(
        "lambada",
        "text of the perplexity objective: lambada (offline default), c4, wikitext2, a file, "
        "or hf:DATASET[:CONFIG[:SPLIT[:FIELD]]]",
        "Calibration data",
    )
    sampling: str = option(
        "packed",
        "perplexity objective. packed: documents shuffled, joined, the first tokens cut into windows. window: each "
        "sequence a random span of a random document longer than it (Wanda/SparseGPT/GISP reference loaders); "
        "sources of short documents (LAMBADA) are joined first",
        "Calibration sampling",
        choices=SAMPLINGS,
        what="sampling",
    )
    bos: str = option(
        "auto",
        f"perplexity objective's calibration windows. {BOS_POLICY_HELP}",
        "BOS token of the windows",
        choices=BOS_POLICIES,
        what="BOS policy",
    )
    tasks: str = option(
        "cmqa",
        "task objectives: comma-separated built-in task names (boolq, piqa, hellaswag, winogrande, arc_easy, "
        "arc_challenge, openbookqa), cmqa for all seven, and/or custom task files (path.jsonl; see README)",
        "Tasks (task objectives)",
    )
    calib_tokens: int | None = option(
        None,
        "token budget of the task objectives (margin, gsm8k)",
        "Calibration tokens of task objectives",
        minimum=1,
        unset="sequences x tokens",
        step=1024,
    )
    calib_items: int | None = option(
        None,
        "margin objective: this many items from every task's calibration pool (32 is a sound minimum), instead "
        "of a token budget of calibration sequences x tokens spread evenly over the tasks (few items of "
        "long-item tasks such as HellaSwag)",
        "Calibration items per task (margin)",
        minimum=1,
        unset="a token budget",
        step=8,
    )
    num_samples: int = option(16, "calibration sequences", "Calibration sequences", minimum=1)
    seq_len: int = option(128, "tokens per calibration sequence", "Tokens per sequence", minimum=2, step=32)
    steps: int = option(10, "pruning steps (1 = one-shot)", "Pruning steps (1 = one-shot)", minimum=1)
    max_sparsity: float = option(
        0.5,
        "structural ratio (fraction of heads and channels) removed at the last step",
        "Maximum structural ratio",
        fraction=True,
        step=0.05,
    )
    schedule: str = option(
        "linear", "how the ratio grows: linear, or cosine (slow start, slow end)", "Schedule", choices=SCHEDULES
    )
    gqa: str = option(
        "query",
        "query: query heads (paper); kv-group: a KV head with its query heads",
        "GQA policy",
        choices=GQA_POLICIES,
        what="GQA policy",
    )
    normalization: str = option(
        "param-count",
        "per-block divisor of the scores: param-count (the unit's scored weights) or reference (the reference "
        "code's constants)",
        "Normalization",
        choices=NORMALIZATIONS,
    )
    protect_first: int | None = option(
        None, "layers at the start never pruned", "Protected first layers", minimum=0, unset="10% of layers"
    )
    protect_last: int = option(1, "layers at the end never pruned", "Protected last layers", minimum=0)
    seed: int = option(0, "seed of the calibration sampling", "Seed")
    batch_size: int | None = option(
        None, "sequences per micro-batch", "Sequences per micro-batch", minimum=1, unset="by device"
    )
    shrink: bool = option(
        True,
        "physically slice the working model between steps; --no-shrink masks instead (same result, slower)",
        "Slice the working model between steps",
    )
    save_scores: bool = option(
        True,
        "keep every step's scores in the trajectory (float16: 2 bytes per structure and step, 0.9 MB for the "
        "embedded SmolLM2's 10 steps; what `gisp info --structure` reads)",
        "Keep every step's scores",
    )
    align: int | None = option(
        None,
        "every cut layer keeps a multiple of this many MLP channels at every step (64 suits llama.cpp's matmul "
        "kernels: odd widths can make a pruned model slower than the dense one)",
        "MLP widths a multiple of",
        minimum=1,
        unset="off",
        step=32,
        metavar="N",
    )
    device: str = option("auto", "auto (the GPU when there is one), cpu, cuda[:N]", "Device")
    dtype: str = option(
        "auto",
        "auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16",
        "dtype",
        choices=("auto", *settings.DTYPES),
    )
    device_map: str | None = option(
        None, "'auto' to spread a large model over GPUs (accelerate)", "Device map", unset="one device"
    )

    @classmethod
    def from_settings(cls, settings: dict, **overrides) -> "PruneConfig":
        """The config a trajectory's recorded ``meta["settings"]`` describe (what is not a field, such as
        ``protected_layers``, left out), with ``overrides`` on top."""
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in settings.items() if k in known}, **overrides)

    def validate(self) -> "PruneConfig":
        """Every setting against its declaration, then the rules between settings; a GispError names the first
        one refused."""
        for name, (kind, opt) in OPTIONS.items():
            opt.check(name, kind, getattr(self, name))
        if self.calib_items is not None:
            if self.objective != "margin":
                other = "--num-samples and --seq-len" if self.objective == "perplexity" else "--calib-tokens"
                raise GispError(
                    f"--calib-items applies to the margin objective, not {self.objective!r}: "
                    f"size this one's calibration with {other}"
                )
            if self.calib_tokens is not None:
                raise GispError("give --calib-items (items per task) or --calib-tokens (a token budget), not both")
        if self.bos != "auto" and self.objective != "perplexity":
            raise GispError(
                f"--bos applies to the perplexity objective's text windows, not {self.objective!r}, "
                "whose sequences are tokenized as lm-evaluation-harness does: leave it at auto"
            )
        return self

    def resolved_protect_first(self, num_layers: int) -> int:
        return int(0.1 * num_layers) if self.protect_first is None else self.protect_first

    def resolved_batch_size(self, device) -> int:
        if self.batch_size is not None:
            return self.batch_size
        tokens = 16384 if getattr(device, "type", str(device)) == "cuda" else 4096
        return max(1, tokens // self.seq_len)

    def resolved_calib_tokens(self) -> int:
        return self.calib_tokens if self.calib_tokens is not None else self.num_samples * self.seq_len

    def to_dict(self) -> dict:
        return asdict(self)


#: Every setting: name -> (its type: int, float, str or bool; its declaration), in the order of the fields.
OPTIONS: dict[str, tuple[str, Option]] = {
    f.name: (f.type.split("|")[0].strip(), f.metadata["option"]) for f in fields(PruneConfig)
}


def add_arguments(parser, only: Sequence[str] | None = None) -> None:
    """Every setting (or those named in ``only``) as a flag of ``parser`` (an ``argparse`` parser): ``--num-samples``
    for ``num_samples``, its type, default, choices and help from its declaration; a bool is ``--x/--no-x``."""
    import argparse

    for name, (kind, opt) in OPTIONS.items():
        if only is not None and name not in only:
            continue
        default = PruneConfig.__dataclass_fields__[name].default
        help = (opt.help + (f" (default: {opt.unset})" if opt.unset else "")).replace("%", "%%")  # argparse's %
        flag = "--" + name.replace("_", "-")
        if kind == "bool":
            on = f" (default: {'on' if default else 'off'})"
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help + on)
            continue
        parser.add_argument(
            flag,
            type={"int": int, "float": float}.get(kind, str),
            default=default,
            choices=opt.allowed(),
            metavar=opt.metavar,
            help=help + (f" (default: {default})" if default is not None else ""),
        )


def from_arguments(args) -> PruneConfig:
    """The config of parsed ``add_arguments`` flags."""
    return PruneConfig(**{name: getattr(args, name) for name in OPTIONS})


def target_ratios(schedule: str, max_ratio: float, steps: int) -> list[float]:
    """Structural ratio to reach after each step 1..T (linear, or a half-cosine ramp)."""
    if schedule == "linear":
        return [max_ratio * t / steps for t in range(1, steps + 1)]
    if schedule == "cosine":
        return [max_ratio * (1 - math.cos(math.pi * t / steps)) / 2 for t in range(1, steps + 1)]
    raise GispError(f"unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
