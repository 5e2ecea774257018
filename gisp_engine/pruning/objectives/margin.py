"""Margin: the objective of decision tasks (multiple choice).

Every answer option of a calibration item is one sequence (prompt + " " + option), and only
the option's tokens are scored. Items are those the evaluator scores: lm-evaluation-harness's
prompts for the seven built-in tasks, and custom task files (``--tasks cmqa,my.jsonl``) as
written (see ``tasks``); under partial scoring (WinoGrande) the scored text is the shared
continuation after each option. With ``nll(s)`` the mean NLL of sequence ``s``'s answer
tokens,

    L⁺ = mean of nll(s) over the correct options,   L⁻ = mean over the incorrect ones,
    objective = L⁺ − L⁻,

so its gradient is ``ḡ⁺ − ḡ⁻`` and the importance ``|W ⊙ (ḡ⁺ − ḡ⁻)|``. Each micro-batch
contributes ``Σ nll(s)/N⁺`` over its correct sequences minus ``Σ nll(s)/N⁻`` over its
incorrect ones, so the micro-batches sum to the objective whatever their mix. N⁺ and N⁻ count
the whole calibration set, so under torch.distributed (each rank its share of the micro-batches,
gradient sums all-reduced) ḡ⁺ and ḡ⁻ are each reduced over all ranks.

The token budget (``--calib-tokens``) is spread evenly over the chosen tasks; each task takes
whole items from its reserved calibration pool, in an order seeded by ``--seed``, until its
share is reached. With ``--calib-items N`` every task takes its first N items in that order
instead, whatever their length (long-item tasks such as HellaSwag then cost more tokens).
The items taken are recorded in ``describe()["slices"]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.errors import GispError
from ...data.tasks import (
    POOL_FRACTION,
    POOL_SEED,
    PROMPTS_VERSION,
    is_custom_task,
    load_task,
    parse_tasks,
    source_identity,
)
from ...model.loglik import ScoredSequence, continuation_logprobs, length_batches, pad_batch, pad_id_of, scored_sequence
from ._base import Objective, ObjectiveSpec

LOSS = (
    "L+ - L-: mean over correct options of each option's mean answer-token NLL, "
    "minus the same mean over incorrect options"
)
POOL_RULE = (
    f"per task a fixed {POOL_FRACTION:.0%} of the items (shuffle seeded by POOL_SEED and the task name, "
    "a custom task's file name) is reserved for calibration; evaluation uses the rest"
)


@dataclass
class TaskSlice:
    """What one task contributed to calibration."""

    task: str
    source: dict
    pool_size: int
    items: list[int]
    correct: int
    incorrect: int
    tokens: int

    def describe(self) -> dict:
        return {
            "source": self.source,
            "pool_size": self.pool_size,
            "items": self.items,
            "sequences": {"correct": self.correct, "incorrect": self.incorrect},
            "tokens": self.tokens,
        }


def task_budgets(total: int, tasks: tuple[str, ...]) -> dict[str, int]:
    """The budget spread evenly; the first tasks take one token more when it does not divide."""
    share, extra = divmod(total, len(tasks))
    return {t: share + (1 if i < extra else 0) for i, t in enumerate(tasks)}


def margin_identity(config, family: str | None = None) -> dict:
    tasks = parse_tasks(config.tasks)
    for task in tasks:  # refused before any weight is loaded (plan, jobs.submit): a bad line names file and line
        if is_custom_task(task):
            load_task(task)
    if config.calib_items is not None:
        for task in tasks:
            check_pool(task, len(load_task(task).calibration_pool()), config.calib_items)
    return {
        "objective": "margin",
        "loss": LOSS,
        "tasks": list(tasks),
        "sources": {t: source_identity(t) for t in tasks},
        "prompts": PROMPTS_VERSION,
        # an item count replaces the token budget; without one the identity is as it always was
        **(
            {"calib_items": config.calib_items}
            if config.calib_items is not None
            else {"calib_tokens": config.resolved_calib_tokens()}
        ),
        "seed": config.seed,
        "pool": {"fraction": POOL_FRACTION, "seed": POOL_SEED},
    }


def check_pool(task: str, pool: int, calib_items: int) -> None:
    if calib_items > pool:
        lower = f"lower it to at most {pool} or drop the task" if pool else "drop the task"
        raise GispError(
            f"task {task!r}: --calib-items {calib_items} is more than its calibration pool holds "
            f"({pool} items): {lower}"
        )


def select_calibration(
    tokenizer,
    tasks: tuple[str, ...],
    calib_tokens: int | None,
    seed: int,
    max_length: int | None,
    calib_items: int | None = None,
):
    """Per task, whole items from the pool (seeded order): until the task's share of tokens is
    reached or, with ``calib_items``, exactly that many items."""
    if calib_items is not None:
        budgets = dict.fromkeys(tasks, None)
    elif calib_tokens < len(tasks):
        raise GispError(f"--calib-tokens {calib_tokens} is fewer than one token per task ({len(tasks)} tasks)")
    else:
        budgets = task_budgets(calib_tokens, tasks)
    slices: list[TaskSlice] = []
    sequences: list[tuple[ScoredSequence, bool]] = []
    for task, budget in budgets.items():
        data = load_task(task)
        order = data.calibration_order(seed)
        if calib_items is not None:
            check_pool(task, len(order), calib_items)
        taken = TaskSlice(task, data.identity(), len(order), [], 0, 0, 0)
        for index in order:
            if (len(taken.items) >= calib_items) if calib_items is not None else (taken.tokens >= budget):
                break
            item = data.items[index]
            for option, (context, continuation) in enumerate(item.requests()):
                seq = scored_sequence(tokenizer, context, continuation, max_length)
                sequences.append((seq, option == item.gold))
                taken.tokens += len(seq)
                taken.correct += option == item.gold
                taken.incorrect += option != item.gold
            taken.items.append(index)
        if budget is not None and taken.tokens < budget:
            raise GispError(
                f"task {task!r}: its calibration pool ({len(order)} items, {taken.tokens} tokens) is smaller than its "
                f"share of --calib-tokens ({budget} of {calib_tokens}): lower --calib-tokens to at most "
                f"{taken.tokens * len(tasks)} or drop the task"
            )
        slices.append(taken)
    return slices, sequences


class MarginObjective(Objective):
    name = "margin"

    def __init__(
        self,
        slices: list[TaskSlice],
        sequences: list[tuple[ScoredSequence, bool]],
        calib_tokens: int | None,
        seed: int,
        max_sequences: int,
        max_tokens: int,
        pad_id: int = 0,
        calib_items: int | None = None,
    ):
        self.slices = slices
        self.calib_tokens = calib_tokens
        self.calib_items = calib_items
        self.seed = seed
        self.num_correct = sum(1 for _, ok in sequences if ok)
        self.num_incorrect = len(sequences) - self.num_correct
        if not self.num_correct or not self.num_incorrect:
            raise GispError("the margin objective needs both correct and incorrect options in its calibration set")
        weights = [1.0 / self.num_correct if ok else -1.0 / self.num_incorrect for _, ok in sequences]
        self._batches = []
        for group in length_batches([len(s) for s, _ in sequences], max_sequences, max_tokens):
            batch = pad_batch([sequences[i][0] for i in group], pad_id)
            batch["weight"] = torch.tensor([weights[i] for i in group], dtype=torch.float32)
            self._batches.append(batch)

    def batches(self):
        return self._batches

    def loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        logp, count = continuation_logprobs(model, batch)
        nll = -logp / count.clamp_min(1).to(logp.dtype)
        return (nll * batch["weight"].to(nll.device)).sum()

    def describe(self) -> dict:
        return {
            "objective": self.name,
            "loss": LOSS,
            "tasks": [s.task for s in self.slices],
            "prompts": PROMPTS_VERSION,
            **(
                {"calib_items": self.calib_items}
                if self.calib_items is not None
                else {"calib_tokens": self.calib_tokens}
            ),
            "tokens_used": sum(s.tokens for s in self.slices),  # every option sequence's tokens, prompt included
            "seed": self.seed,
            "sequences": {"correct": self.num_correct, "incorrect": self.num_incorrect},
            "pool": {"fraction": POOL_FRACTION, "seed": POOL_SEED, "rule": POOL_RULE},
            "slices": {s.task: s.describe() for s in self.slices},
        }

    def summary(self, value: float) -> dict:
        return {"margin": value}  # L+ - L-: negative when the correct options are the likelier ones


def build_margin(loaded, config) -> MarginObjective:
    tasks = parse_tasks(config.tasks)
    budget = None if config.calib_items is not None else config.resolved_calib_tokens()
    slices, sequences = select_calibration(
        loaded.tokenizer, tasks, budget, config.seed, loaded.max_length or None, config.calib_items
    )
    per_batch = config.resolved_batch_size(loaded.device)
    # options vary in length: cap each micro-batch's padded tokens as the perplexity objective's are capped
    return MarginObjective(
        slices,
        sequences,
        budget,
        config.seed,
        per_batch,
        per_batch * config.seq_len,
        pad_id_of(loaded.tokenizer),
        config.calib_items,
    )


OBJECTIVE = ObjectiveSpec("margin", margin_identity, build_margin)
