"""Settings of a pruning run, with validation that explains every refusal."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..core import registry, settings
from ..core.errors import GispError
from ..data.text import BOS_POLICIES, SAMPLINGS
from ..model.structures import GQA_POLICIES, NORMALIZATIONS

SCHEDULES = ("linear", "cosine")


#: Pruning methods: iterative GISP, and the fixed-ranking baselines (``gisp_engine.pruning.methods``).
METHODS = registry.METHODS.names()


@dataclass
class PruneConfig:
    model: str = settings.DEFAULT_MODEL
    method: str = "gisp"  # or a baseline: METHODS
    objective: str = "perplexity"
    calib: str = "lambada"  # text source of the perplexity objective
    sampling: str = "packed"  # how the perplexity objective cuts its windows: see gisp_engine.data.text.SAMPLINGS
    bos: str = "auto"  # BOS token of the perplexity objective's windows: see gisp_engine.data.text.BOS_POLICIES
    tasks: str = "cmqa"  # task list of the margin objective (comma-separated, or cmqa for all seven)
    calib_tokens: int | None = None  # token budget of task objectives; None: num_samples * seq_len
    calib_items: int | None = None  # margin objective: this many items from every task, instead of a token budget
    num_samples: int = 16
    seq_len: int = 128
    steps: int = 10
    max_sparsity: float = 0.5  # the structural ratio reached at the last step
    schedule: str = "linear"
    gqa: str = "query"
    normalization: str = "param-count"
    protect_first: int | None = None  # None: int(0.1 * num_layers)
    protect_last: int = 1
    seed: int = 0
    batch_size: int | None = None  # sequences per micro-batch; None: by device
    shrink: bool = True  # physically shrink the working model between steps (same result as masking)
    save_scores: bool = True  # keep every step's scores in the trajectory (float16: what `gisp info --structure` reads)
    align: int | None = None  # every cut layer's MLP channel count a multiple of this at every step; None: any count
    device: str = "auto"
    dtype: str = "auto"
    device_map: str | None = None

    @classmethod
    def from_settings(cls, settings: dict, **overrides) -> "PruneConfig":
        """The config a trajectory's recorded ``meta["settings"]`` describe (what is not a field, such as
        ``protected_layers``, left out), with ``overrides`` on top."""
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in settings.items() if k in known}, **overrides)

    def validate(self) -> "PruneConfig":
        def whole(name: str, low: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise GispError(f"--{name.replace('_', '-')} must be a whole number of at least {low}, got {value!r}")

        whole("steps", 1)
        whole("num_samples", 1)
        whole("seq_len", 2)
        whole("protect_last", 0)
        if self.protect_first is not None:
            whole("protect_first", 0)
        if self.batch_size is not None:
            whole("batch_size", 1)
        if self.calib_tokens is not None:
            whole("calib_tokens", 1)
        if self.align is not None:
            whole("align", 1)
        if self.calib_items is not None:
            whole("calib_items", 1)
            if self.objective != "margin":
                other = "--num-samples and --seq-len" if self.objective == "perplexity" else "--calib-tokens"
                raise GispError(
                    f"--calib-items applies to the margin objective, not {self.objective!r}: "
                    f"size this one's calibration with {other}"
                )
            if self.calib_tokens is not None:
                raise GispError("give --calib-items (items per task) or --calib-tokens (a token budget), not both")
        if not isinstance(self.seed, int):
            raise GispError(f"--seed must be a whole number, got {self.seed!r}")
        r = self.max_sparsity
        if isinstance(r, bool) or not isinstance(r, (int, float)) or math.isnan(r) or not 0.0 < r < 1.0:
            raise GispError(f"--max-sparsity must be a fraction between 0 and 1 (exclusive), got {r!r}")
        if self.method not in METHODS:
            raise GispError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.sampling not in SAMPLINGS:
            raise GispError(f"unknown sampling {self.sampling!r}: choose one of {', '.join(SAMPLINGS)}")
        if self.bos not in BOS_POLICIES:
            raise GispError(f"unknown BOS policy {self.bos!r}: choose one of {', '.join(BOS_POLICIES)}")
        if self.bos != "auto" and self.objective != "perplexity":
            raise GispError(
                f"--bos applies to the perplexity objective's text windows, not {self.objective!r}, "
                "whose sequences are tokenized as lm-evaluation-harness does: leave it at auto"
            )
        if self.schedule not in SCHEDULES:
            raise GispError(f"unknown schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if self.gqa not in GQA_POLICIES:
            raise GispError(f"unknown GQA policy {self.gqa!r}: choose one of {', '.join(GQA_POLICIES)}")
        if self.normalization not in NORMALIZATIONS:
            raise GispError(f"unknown normalization {self.normalization!r}: choose one of {', '.join(NORMALIZATIONS)}")
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


def target_ratios(schedule: str, max_ratio: float, steps: int) -> list[float]:
    """Structural ratio to reach after each step 1..T (linear, or a half-cosine ramp)."""
    if schedule == "linear":
        return [max_ratio * t / steps for t in range(1, steps + 1)]
    if schedule == "cosine":
        return [max_ratio * (1 - math.cos(math.pi * t / steps)) / 2 for t in range(1, steps + 1)]
    raise GispError(f"unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
