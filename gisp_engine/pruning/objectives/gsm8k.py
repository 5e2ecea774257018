"""GSM8K: NLL of the reference solution given the question, the prompt masked out.

Each calibration sequence is ``"Question: {question}\\nAnswer:"`` followed by ``" " + answer``
(the prompt of the GSM8K evaluation, and of lm-evaluation-harness); only the answer's
tokens are scored. The objective is the mean over sequences of each answer's mean token NLL.
Items come from the train split (evaluation uses the test split) in an order seeded by
``--seed``, whole, until the token budget (``--calib-tokens``) is reached.
"""

from __future__ import annotations

import math

import torch

from ...core.errors import GispError
from ...data.tasks import load_task, source_identity
from ...model.loglik import ScoredSequence, continuation_logprobs, length_batches, pad_batch, pad_id_of, scored_sequence
from ._base import Objective, ObjectiveSpec

SOURCE = "gsm8k_train"
PROMPT = "Question: {question}\nAnswer:"


def gsm8k_identity(config, family: str | None = None) -> dict:
    return {
        "objective": "gsm8k",
        "source": source_identity(SOURCE),
        "prompt": PROMPT,
        "calib_tokens": config.resolved_calib_tokens(),
        "seed": config.seed,
    }


class GSM8KObjective(Objective):
    name = "gsm8k"

    def __init__(
        self,
        sequences: list[ScoredSequence],
        items: list[int],
        source: dict,
        calib_tokens: int,
        seed: int,
        max_sequences: int,
        max_tokens: int,
        pad_id: int = 0,
    ):
        self.items, self.source, self.calib_tokens, self.seed = items, source, calib_tokens, seed
        self.num_sequences = len(sequences)
        self.tokens = sum(len(s) for s in sequences)
        self._batches = [
            pad_batch([sequences[i] for i in group], pad_id)
            for group in length_batches([len(s) for s in sequences], max_sequences, max_tokens)
        ]

    def batches(self):
        return self._batches

    def loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        logp, count = continuation_logprobs(model, batch)
        return (-logp / count.clamp_min(1).to(logp.dtype)).sum() / self.num_sequences

    def describe(self) -> dict:
        return {
            "objective": self.name,
            "prompt": PROMPT,
            "calib_tokens": self.calib_tokens,
            "tokens_used": self.tokens,
            "seed": self.seed,
            "sequences": self.num_sequences,
            "slices": {SOURCE: {"source": self.source, "items": self.items, "tokens": self.tokens}},
        }

    def summary(self, value: float) -> dict:
        return {"answer_perplexity": math.exp(value) if value < 700 else float("inf")}


def build_gsm8k(loaded, config) -> GSM8KObjective:
    data = load_task(SOURCE)
    budget = config.resolved_calib_tokens()
    sequences, items, tokens = [], [], 0
    for index in data.calibration_order(config.seed):
        if tokens >= budget:
            break
        item = data.items[index]
        seq = scored_sequence(
            loaded.tokenizer, PROMPT.format(question=item.question), " " + item.answer, loaded.max_length or None
        )
        sequences.append(seq)
        items.append(index)
        tokens += len(seq)
    if tokens < budget:
        raise GispError(f"GSM8K train holds {tokens} tokens, fewer than --calib-tokens {budget}: lower it")
    per_batch = config.resolved_batch_size(loaded.device)
    return GSM8KObjective(
        sequences,
        items,
        data.identity(),
        budget,
        config.seed,
        per_batch,
        per_batch * config.seq_len,
        pad_id_of(loaded.tokenizer),
    )


OBJECTIVE = ObjectiveSpec("gsm8k", gsm8k_identity, build_gsm8k)
