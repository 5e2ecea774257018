"""Quick checks of a point of a trajectory: evaluations remembered in the cache, and generation.

An evaluation of the model at step ``t`` of a trajectory is stored in
``cache/evals/<trajectory key>.json`` (written atomically under a lock), so that it is computed
once and shows on the trajectory's curve in the explorer. The evaluators themselves live in
:mod:`gisp_engine.evaluation.evaluate` (and the task modules); this module only names them, remembers
their results and builds the model at a step.

Adding an evaluator: register a :class:`Check` in ``CHECKS`` (or let :func:`available_checks`
discover it); the Evaluate page offers every registered check.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core import settings
from ..core.errors import GispError
from ..core.fsutil import atomic_write_json, ensure_writable_dir, file_lock
from ..core.progress import ProgressCallback, null_progress
from ..data.tasks import is_custom_task
from ..model.loading import LoadedModel
from ..pruning.subnetwork import apply_step, check_compatible
from ..pruning.trajectory import Trajectory


@dataclass(frozen=True)
class Check:
    """A quick evaluation the explorer can run at a point of a trajectory."""

    task: str
    metric: str  # "perplexity" (lower is better) or "accuracy"
    title: str
    run: Callable[..., dict]  # (loaded, trajectory, limit, progress, **options) -> {"value": float, ...details}
    defaults: tuple[tuple[str, object], ...] = ()  # options the check takes besides the limit, with defaults

    @property
    def options(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.defaults)

    def resolve(self, options: dict | None, family: str | None = None) -> dict:
        """Every option of this check, given or default, so equal requests have equal identities.

        A BOS policy is resolved for the model ``family`` (``data.text.resolve_bos``); ``stream``, the protocol
        of every result remembered before the setting existed, is left out so that those still answer.
        """
        from ..data.text import resolve_bos

        given = options or {}
        resolved = {name: given.get(name, default) for name, default in self.defaults}
        if "bos" in resolved:
            bos = resolve_bos(resolved.pop("bos"), family)
            if bos != "stream":
                resolved["bos"] = bos
        return resolved


def _wikitext2(
    loaded: LoadedModel,
    trajectory: Trajectory,
    limit: int | None,
    progress: ProgressCallback,
    seq_len: int = 128,
    batch_size: int = 8,
    bos: str = "stream",
) -> dict:
    from .evaluate import wikitext2_perplexity

    result = wikitext2_perplexity(loaded.model, loaded.tokenizer, seq_len, limit, batch_size, progress, bos)
    return {"value": result.perplexity, **result.to_dict()}


CHECKS: dict[str, Check] = {
    "wikitext2": Check(
        "wikitext2",
        "perplexity",
        "WikiText-2 perplexity",
        _wikitext2,
        (("seq_len", 128), ("batch_size", 8), ("bos", "auto")),
    ),
}


def trajectory_family(trajectory: Trajectory) -> str | None:
    """The model family a trajectory was built for (what ``auto`` settings resolve by)."""
    return trajectory.meta.get("model", {}).get("family")


_HEADLINES = ("perplexity", "average_acc", "exact_match", "acc")  # the one number of each result type


def _task_check(task: str) -> Check:
    """An accuracy task of ``evaluate.evaluate_task``, skipping what the trajectory calibrated on."""

    def run(
        loaded: LoadedModel, trajectory: Trajectory, limit: int | None, progress: ProgressCallback, **options
    ) -> dict:
        from ..data.tasks import calibration_exclusions
        from .evaluate import evaluate_task

        exclusions = calibration_exclusions(trajectory.meta.get("objective"))
        result = evaluate_task(
            loaded.model, loaded.tokenizer, task, limit=limit, exclusions=exclusions, progress=progress, **options
        )
        value = next(float(getattr(result, name)) for name in _HEADLINES if hasattr(result, name))
        return {"value": value, **result.to_dict()}

    title = "GSM8K exact match" if task == "gsm8k" else f"{task} accuracy" + (" (average)" if task == "cmqa" else "")
    defaults = (
        (("batch_size", 8), ("few_shot", 5), ("max_new_tokens", 256))
        if task == "gsm8k"
        else (("batch_size", 8), ("include_pool", False))
    )
    return Check(task, "accuracy", title, run, defaults)


def available_checks(extra: Sequence[str] = ()) -> dict[str, Check]:
    """WikiText-2 perplexity, every accuracy task ``evaluate`` offers, and ``extra`` custom task files."""
    from . import evaluate  # a broken install fails here, loudly, rather than offering perplexity only

    checks = dict(CHECKS)
    for task in evaluate.TASKS:
        checks.setdefault(task, _task_check(task))
    for name in extra:
        if name not in checks and is_custom_task(name):
            checks[name] = _task_check(name)
    return checks


# ---- the model at a step -------------------------------------------------------------------
def model_at_step(dense: LoadedModel, trajectory: Trajectory, step: int) -> LoadedModel:
    """A pruned copy of ``dense`` at ``step`` (``dense`` itself at step 0); ``dense`` is left intact."""
    check_compatible(dense, trajectory)
    trajectory.check_step(step)
    if step == 0:
        return dense
    pruned = dataclasses.replace(dense, model=copy.deepcopy(dense.model))
    apply_step(pruned, trajectory, step, physical=True)
    return pruned


def greedy_generate(loaded: LoadedModel, prompt: str, max_new_tokens: int = 40) -> str:
    """Greedy continuation of ``prompt`` (the text after the prompt)."""
    import torch

    if not prompt.strip():
        raise GispError("the prompt is empty: type a few words to continue")
    if not 1 <= max_new_tokens <= 512:
        raise GispError(f"max new tokens must be between 1 and 512, got {max_new_tokens}")
    tok = loaded.tokenizer
    ids = tok(prompt, return_tensors="pt")["input_ids"].to(loaded.device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.no_grad():
        out = loaded.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
        )
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


# ---- remembered evaluations ----------------------------------------------------------------
def evals_dir() -> Path:
    return settings.cache_dir() / "evals"


def trajectory_id(trajectory: Trajectory) -> str:
    """The trajectory's request key, or a hash of its folder when it has none."""
    if trajectory.key:
        return trajectory.key
    return hashlib.sha256(str(Path(trajectory.path or "").resolve()).encode()).hexdigest()[:20]


def evals_path(trajectory: Trajectory) -> Path:
    return evals_dir() / f"{trajectory_id(trajectory)}.json"


SHIPPED_EVALS = "evaluations.json"  # results carried inside a trajectory folder (the repository's examples)


def _stored(path: Path) -> list[dict]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["results"]
        return [r for r in rows if isinstance(r, dict) and {"task", "step", "value", "label"} <= r.keys()]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def load_evaluations(trajectory: Trajectory) -> list[dict]:
    """Every remembered evaluation of this trajectory (empty when none or unreadable).

    The cache's store first; then the results shipped in the trajectory's own folder
    (``evaluations.json``, as the repository's examples carry them) that the store does not replace.
    """
    rows = _stored(evals_path(trajectory))
    if trajectory.path is not None:
        have = {repr(r.get("identity")) for r in rows}
        rows += [r for r in _stored(Path(trajectory.path) / SHIPPED_EVALS) if repr(r.get("identity")) not in have]
    return rows


# Part of every remembered result's identity: raised whenever what a check computes changes (prompts,
# scoring), so that results computed before are not taken for today's. 2: lm-evaluation-harness's prompts.
EVAL_VERSION = 2


def evaluation_identity(task: str, step: int, limit: int | None, options: dict, dtype: str) -> dict:
    return {
        "task": task,
        "step": int(step),
        "limit": limit,
        "options": dict(sorted(options.items())),
        "dtype": dtype,
        "version": EVAL_VERSION,
    }


def find_evaluation(
    trajectory: Trajectory, task: str, step: int, limit: int | None, options: dict, dtype: str
) -> dict | None:
    want = evaluation_identity(task, step, limit, options, dtype)
    for row in load_evaluations(trajectory):
        if row.get("identity") == want:
            return row
    return None


def _label(check: Check, limit: int | None, options: dict) -> str:
    """The check and every setting that changes its value, e.g. 'WikiText-2 perplexity (seq len 128, BOS stream,
    first 120)'."""
    parts = [
        f"{k.replace('_', ' ')} {v}"
        for k, v in sorted(options.items())
        if k not in ("batch_size", "max_new_tokens", "bos") and v is not False
    ]
    if "bos" in check.options:  # stated whether or not the identity holds it (absent: stream)
        parts.append(f"BOS {options.get('bos', 'stream')}")
    parts.append(f"first {limit}" if limit else "all")
    return f"{check.title} ({', '.join(parts)})"


def row_label(row: dict) -> str:
    """A remembered result's settings in words, from its identity (rows stored before a setting was stated
    in labels are described as today's are); the stored label where the check is not known here."""
    ident = row.get("identity") or {}
    check = available_checks([row.get("task", "")]).get(row.get("task", ""))
    if check is None or "options" not in ident:
        return row.get("label", str(row.get("task")))
    return _label(check, ident.get("limit"), ident["options"])


def evaluate_step(
    loaded_at_step: LoadedModel,
    trajectory: Trajectory,
    step: int,
    task: str = "wikitext2",
    limit: int | None = 32,
    options: dict | None = None,
    progress: ProgressCallback = null_progress,
    refresh: bool = False,
) -> dict:
    """Evaluate the model at ``step`` (already built) on ``task``, or return the remembered result."""
    checks = available_checks([task])
    if task not in checks:
        raise GispError(f"unknown check {task!r}: choose one of {', '.join(checks)}")
    check = checks[task]
    trajectory.check_step(step)
    options = check.resolve(options, trajectory_family(trajectory))
    if limit is not None and limit < 1:
        raise GispError(f"the limit must be at least 1 example (or none for all), got {limit}")
    dtype = str(loaded_at_step.dtype).removeprefix("torch.")
    identity = evaluation_identity(task, step, limit, options, dtype)
    if not refresh:
        hit = find_evaluation(trajectory, task, step, limit, options, dtype)
        if hit is not None:
            return dict(hit, cached=True)
    details = check.run(loaded_at_step, trajectory, limit, progress, **options)
    row = {
        "identity": identity,
        "task": task,
        "metric": check.metric,
        "label": _label(check, limit, options),
        "value": float(details["value"]),
        "step": int(step),
        "param_sparsity": trajectory.steps[step].param_sparsity,
        "structural_ratio": trajectory.steps[step].structural_ratio,
        "model": trajectory.meta.get("model", {}).get("id"),
        "device": str(loaded_at_step.device),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "details": {k: v for k, v in details.items() if k != "value"},
    }
    remember_evaluation(trajectory, row)
    return dict(row, cached=False)


def ship_evaluations(trajectory: Trajectory) -> Path:
    """Write every remembered evaluation of ``trajectory`` into its own folder (how the examples carry theirs)."""
    if trajectory.path is None:
        raise GispError("this trajectory has no folder to write its evaluations into")
    path = Path(trajectory.path) / SHIPPED_EVALS
    rows = sorted(load_evaluations(trajectory), key=lambda r: (r["task"], r["label"], r["step"]))
    atomic_write_json(path, {"trajectory": trajectory_id(trajectory), "results": rows})
    return path


def remember_evaluation(trajectory: Trajectory, row: dict) -> None:
    """Store ``row`` (replacing any row of the same identity) in the trajectory's evaluation file."""
    path = evals_path(trajectory)
    ensure_writable_dir(path.parent)
    with file_lock(path.with_suffix(".lock"), what=f"the evaluations of {trajectory_id(trajectory)}", timeout=120):
        rows = [r for r in _stored(path) if r.get("identity") != row["identity"]]
        rows.append(row)
        atomic_write_json(
            path, {"trajectory": trajectory_id(trajectory), "path": str(trajectory.path), "results": rows}
        )
