"""Evaluation: one entry point (``evaluate_task``) for every metric, and WikiText-2 perplexity.

Multiple-choice accuracy lives in ``zeroshot``, GSM8K exact match in ``gsm8k``; this module
dispatches on the task name, so the CLI, the app and the benchmarks evaluate the same way.

WikiText-2 perplexity is computed over non-overlapping windows.
The windows are ``seq_len`` tokens long and do not overlap; the loss of a window is the
mean NLL of its ``seq_len - 1`` next-token predictions, and the perplexity is the
exponential of the mean over windows. 128-token windows are the convention of the GISP
and LLM-Pruner papers; Wanda and SliceGPT use 2,048. The two are not comparable, so the
window length is part of every result, and so is the BOS policy (``data.text.BOS_POLICIES``):
``stream`` cuts the windows from the split tokenized once (at most one BOS, at its very start:
the papers' protocol); ``each`` puts the tokenizer's BOS in front of ``seq_len - 1`` tokens of
text in every window, which models trained to see a BOS first (Gemma 3) need.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import torch

from ..core.errors import GispError
from ..core.progress import ProgressCallback, ProgressEvent, null_progress
from ..data.tasks import CHOICE_TASKS, CUSTOM_FORMAT, SUITES, is_custom_task
from ..data.text import bos_token_id, resolve_bos, wikitext2_test_text, with_bos
from ..model.nll import sequence_nll

#: the named tasks; besides these, a custom task file (``path.jsonl``, see ``tasks.is_custom_task``)
#: or a comma-separated list of decision tasks
TASKS = ("wikitext2", *CHOICE_TASKS, *SUITES, "gsm8k")
_TOKENS: dict = {}


@dataclass
class PerplexityResult:
    task: str
    seq_len: int
    windows: int
    tokens: int
    perplexity: float
    mean_nll: float
    data: dict
    bos: str = "stream"  # resolved BOS policy: each (one per window) or stream (none but the split's first)

    def to_dict(self) -> dict:
        return asdict(self)


def wikitext2_ids(tokenizer, special_tokens: bool = True) -> tuple[torch.Tensor, dict]:
    """The whole test split tokenized once (memoized per tokenizer); ``special_tokens``: as the tokenizer
    adds them to a text (a BOS at the start for most), else none."""
    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), special_tokens)
    if key not in _TOKENS:
        text, identity = wikitext2_test_text()
        ids = torch.tensor(tokenizer(text, add_special_tokens=special_tokens)["input_ids"], dtype=torch.long)
        _TOKENS[key] = (ids, identity)
    return _TOKENS[key]


def wikitext2_windows(tokenizer, seq_len: int, limit: int | None, bos: str) -> tuple[torch.Tensor, dict]:
    """The first ``limit`` (all when None) non-overlapping windows of ``seq_len`` tokens under the resolved
    BOS policy ``bos`` (``each``: BOS + ``seq_len - 1`` tokens of text; ``stream``: ``seq_len`` tokens)."""
    each = bos == "each"
    bos_id = bos_token_id(tokenizer) if each else None
    ids, identity = wikitext2_ids(tokenizer, special_tokens=not each)
    text_len = seq_len - 1 if each else seq_len
    windows = ids.numel() // text_len
    if limit is not None:
        windows = min(windows, limit)
    if windows == 0:
        raise GispError("WikiText-2 is shorter than one window")
    data = ids[: windows * text_len].view(windows, text_len)
    return (with_bos(data, bos_id) if each else data), identity


@torch.no_grad()
def wikitext2_perplexity(
    model: torch.nn.Module,
    tokenizer,
    seq_len: int = 128,
    limit: int | None = None,
    batch_size: int = 8,
    progress: ProgressCallback = null_progress,
    bos: str = "auto",
) -> PerplexityResult:
    """Perplexity over the first ``limit`` windows of ``seq_len`` tokens; ``bos``: a ``data.text.BOS_POLICIES``
    entry (``auto`` resolves by the model's family)."""
    from ..model.adapters import family_of_config

    if seq_len < 2:
        raise GispError("--seq-len must be at least 2")
    max_len = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    if max_len and seq_len > max_len:
        raise GispError(f"--seq-len {seq_len} is longer than the model's context ({max_len} tokens)")
    if limit is not None and limit < 1:
        raise GispError("--limit must be at least 1")
    bos = resolve_bos(bos, family_of_config(model.config))
    data, identity = wikitext2_windows(tokenizer, seq_len, limit, bos)
    windows = data.shape[0]
    total = 0.0
    model.eval()
    for start in range(0, windows, batch_size):
        chunk = data[start : start + batch_size]
        total += float(sequence_nll(model, chunk).double().sum())
        progress(ProgressEvent("eval", min(start + batch_size, windows), windows, message="wikitext2"))
    mean_nll = total / windows
    return PerplexityResult(
        "wikitext2", seq_len, windows, windows * seq_len, math.exp(mean_nll), mean_nll, identity, bos
    )


def check_task(task: str) -> str:
    """``task`` if ``evaluate_task`` takes it (a custom file must exist), else a ``GispError`` saying why."""
    from ..data.tasks import parse_tasks

    if task in TASKS:
        return task
    if is_custom_task(task) or "," in task:
        parse_tasks(task)  # refuses unknown names and missing files
        return task
    raise _unknown_task(task)


def _unknown_task(task: str) -> GispError:
    return GispError(
        f"unknown evaluation task {task!r}: choose one of {', '.join(TASKS)}, "
        f"or a custom task file ending in .jsonl ({CUSTOM_FORMAT})"
    )


def task_argument(task: str) -> str:
    """``check_task`` for argparse (``type=``), so that a wrong ``--task`` is refused before a model loads."""
    import argparse

    try:
        return check_task(task)
    except GispError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def evaluate_task(
    model: torch.nn.Module,
    tokenizer,
    task: str,
    *,
    limit: int | None = None,
    seq_len: int = 128,
    batch_size: int = 8,
    few_shot: int = 5,
    max_new_tokens: int = 256,
    exclusions: Mapping[str, Iterable[int]] | None = None,
    include_pool: bool = False,
    progress: ProgressCallback = null_progress,
    bos: str = "auto",
):
    """Evaluate ``task`` (one of ``TASKS``, a custom task's ``.jsonl`` path, or a comma-separated list of
    decision tasks); the result has ``to_dict()``, and ``result_text`` renders it.

    ``limit``: WikiText-2 windows, or items per task. ``bos``: WikiText-2's BOS policy (the choice tasks
    tokenize as lm-evaluation-harness does, with the BOS it adds). ``exclusions``: item indices per task source
    that a trajectory calibrated on (``tasks.calibration_exclusions``), skipped on top of the
    reserved calibration pools (which ``include_pool`` keeps in).
    """
    from .gsm8k import TEST_SOURCE, evaluate_gsm8k
    from .zeroshot import evaluate_choice_tasks

    exclusions = exclusions or {}
    if task == "wikitext2":
        return wikitext2_perplexity(model, tokenizer, seq_len, limit, batch_size, progress, bos)
    if task in CHOICE_TASKS or task in SUITES or is_custom_task(task) or "," in task:
        return evaluate_choice_tasks(model, tokenizer, task, limit, exclusions, include_pool, batch_size, progress)
    if task == "gsm8k":
        return evaluate_gsm8k(
            model, tokenizer, limit, few_shot, max_new_tokens, batch_size, exclusions.get(TEST_SOURCE, ()), progress
        )
    raise _unknown_task(task)


def result_text(result) -> str:
    """A few readable lines for any result of ``evaluate_task``."""
    from .gsm8k import GSM8KResult
    from .zeroshot import ChoiceSuiteResult

    if isinstance(result, PerplexityResult):
        return (
            f"{result.task} perplexity {result.perplexity:.3f} ({result.windows} non-overlapping windows "
            f"of {result.seq_len} tokens, BOS {result.bos})"
        )
    if isinstance(result, ChoiceSuiteResult):
        return result.table()
    if isinstance(result, GSM8KResult):
        return (
            f"gsm8k exact match {result.exact_match:.4f} ({result.items} test problems, {result.few_shot}-shot, "
            f"greedy, at most {result.max_new_tokens} new tokens)"
        )
    raise TypeError(f"not an evaluation result: {type(result).__name__}")
