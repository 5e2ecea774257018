"""Zero-shot multiple choice: the seven decision tasks and custom task files, scored as
lm-evaluation-harness scores them.

The prompts are lm-eval 0.4.13's own (see ``tasks``). Each option's score is the log-likelihood of ``" " + option``
after the prompt (WinoGrande: of the shared continuation after each context option, "partial scoring"). ``acc``
counts the items whose likeliest option is the gold one; ``acc_norm`` divides each option's log-likelihood by the
option's length in characters first (lm-evaluation-harness's ``acc_norm``; for these ASCII-dominated files it is the
byte length), reported where that harness reports it (custom tasks: unless they use partial scoring). Items are the
task's held-out part: the reserved calibration pool and any calibration slice a trajectory names are skipped (see
``tasks``), and ``limit`` takes the first N held-out items in file order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..core.errors import GispError
from ..core.progress import ProgressCallback, ProgressEvent, null_progress
from ..data.tasks import ACC_NORM_TASKS, ChoiceItem, is_custom_task, load_task, parse_tasks, task_title
from ..model.loglik import continuation_logprobs, length_batches, pad_batch, pad_id_of, scored_sequence


@dataclass
class ChoiceTaskResult:
    task: str
    acc: float
    acc_norm: float | None  # None where lm-evaluation-harness does not report it
    items: int  # items evaluated
    counts: dict  # total, calibration_pool, calibration_slice (skipped), held_out
    limit: int | None
    source: dict


@dataclass
class ChoiceSuiteResult:
    tasks: list[ChoiceTaskResult] = field(default_factory=list)

    @property
    def average_acc(self) -> float:
        return float(np.mean([t.acc for t in self.tasks]))

    def to_dict(self) -> dict:
        return {"average_acc": self.average_acc, "tasks": {t.task: asdict(t) for t in self.tasks}}

    def table(self) -> str:
        lines = [f"{'task':<14} {'acc':>7} {'acc_norm':>8} {'items':>6}  skipped (calibration pool + slice)"]
        for t in self.tasks:
            norm = f"{t.acc_norm:8.4f}" if t.acc_norm is not None else f"{'-':>8}"
            lines.append(
                f"{task_title(t.task):<14} {t.acc:7.4f} {norm} {t.items:>6}  "
                f"{t.counts['calibration_pool']} + {t.counts['calibration_slice']}"
            )
        if len(self.tasks) > 1:
            lines.append(f"{'average':<14} {self.average_acc:7.4f}")
        return "\n".join(lines)


@torch.no_grad()
def choice_loglikelihoods(
    model: torch.nn.Module,
    tokenizer,
    items: Sequence[ChoiceItem],
    batch_size: int = 8,
    progress: ProgressCallback = null_progress,
    message: str = "",
) -> list[np.ndarray]:
    """Per item, the log-likelihood of each option (batched, longest sequences first)."""
    if batch_size < 1:
        raise GispError("--batch-size must be at least 1")
    max_length = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
    owners, sequences = [], []
    for n, item in enumerate(items):
        for context, continuation in item.requests():
            owners.append(n)
            sequences.append(scored_sequence(tokenizer, context, continuation, max_length))
    scores = np.zeros(len(sequences))
    pad_id = pad_id_of(tokenizer)
    groups = length_batches([len(s) for s in sequences], batch_size)
    was_training = model.training
    model.eval()
    try:
        for done, group in enumerate(groups, 1):
            logp, _ = continuation_logprobs(model, pad_batch([sequences[i] for i in group], pad_id))
            scores[group] = logp.double().cpu().numpy()
            progress(ProgressEvent("eval", done, len(groups), message=message))
    finally:
        model.train(was_training)
    out: list[list[float]] = [[] for _ in items]
    for owner, score in zip(owners, scores):
        out[owner].append(float(score))
    return [np.asarray(x) for x in out]


def pick(item: ChoiceItem, loglikelihoods: np.ndarray) -> tuple[int, int]:
    """The chosen option, plain and length-normalised (ties go to the first, as ``np.argmax``)."""
    lengths = np.array([float(len(c)) for c in item.choices])
    return int(np.argmax(loglikelihoods)), int(np.argmax(loglikelihoods / lengths))


@dataclass
class ChoicePicks:
    """Per evaluated item, the option picked plain and length-normalised (what ``acc`` and ``acc_norm`` count)."""

    items: list[ChoiceItem]
    picks: list[tuple[int, int]]
    counts: dict  # total, calibration_pool, calibration_slice (skipped), held_out


def choice_picks(
    model: torch.nn.Module,
    tokenizer,
    task: str,
    limit: int | None = None,
    exclude: Iterable[int] = (),
    include_pool: bool = False,
    batch_size: int = 8,
    progress: ProgressCallback = null_progress,
) -> ChoicePicks:
    """The first ``limit`` held-out items of ``task`` and the model's picks on each."""
    if limit is not None and limit < 1:
        raise GispError("--limit must be at least 1")
    items, counts = load_task(task).evaluation_items(exclude, include_pool)
    items = items[:limit] if limit is not None else items
    if not items:
        raise GispError(f"task {task!r}: no items left to evaluate after skipping the calibration items")
    lls = choice_loglikelihoods(model, tokenizer, items, batch_size, progress, message=task)
    return ChoicePicks(items, [pick(item, ll) for item, ll in zip(items, lls)], counts)


def evaluate_choice_task(
    model: torch.nn.Module,
    tokenizer,
    task: str,
    limit: int | None = None,
    exclude: Iterable[int] = (),
    include_pool: bool = False,
    batch_size: int = 8,
    progress: ProgressCallback = null_progress,
) -> ChoiceTaskResult:
    done = choice_picks(model, tokenizer, task, limit, exclude, include_pool, batch_size, progress)
    items, picks, counts, data = done.items, done.picks, done.counts, load_task(task)
    acc = float(np.mean([p == item.gold for (p, _), item in zip(picks, items)]))
    # custom tasks: length-normalised too, unless partial scoring (the options are then contexts)
    norm = task in ACC_NORM_TASKS or (is_custom_task(task) and all(it.continuation is None for it in items))
    acc_norm = float(np.mean([p == item.gold for (_, p), item in zip(picks, items)])) if norm else None
    return ChoiceTaskResult(data.name, acc, acc_norm, len(items), counts, limit, data.identity())


def evaluate_choice_tasks(
    model: torch.nn.Module,
    tokenizer,
    tasks: str | Sequence[str],
    limit: int | None = None,
    exclusions: Mapping[str, Iterable[int]] | None = None,
    include_pool: bool = False,
    batch_size: int = 8,
    progress: ProgressCallback = null_progress,
) -> ChoiceSuiteResult:
    """One or several decision tasks (``cmqa`` for all seven, custom task files by path); ``exclusions``:
    items per task to skip (keyed as ``tasks.parse_tasks`` names them)."""
    exclusions = exclusions or {}
    return ChoiceSuiteResult(
        [
            evaluate_choice_task(model, tokenizer, t, limit, exclusions.get(t, ()), include_pool, batch_size, progress)
            for t in parse_tasks(tasks)
        ]
    )
