"""Log-likelihood of a continuation given a context: the one scoring path shared by the task
objectives (margin, GSM8K) and the zero-shot evaluator.

Tokenization follows lm-evaluation-harness: trailing whitespace of the context moves to the
continuation, the whole pair is tokenized once and split where the context's own tokens end,
and a pair longer than the model's context is cut on the left.

Batches are right-padded. Under causal attention, padding after a sequence cannot change
any position before it, and position ids count from the start either way, so no attention
mask is needed. The LM head runs only at the positions that predict a continuation token,
so a long prompt with a one-word answer does not pay for a vocabulary-sized projection at
every prompt position; like ``sequence_nll`` it runs over chunks of positions, recomputed in
the backward pass, so a batch's full logits never exist at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..core.errors import GispError
from .nll import input_device, token_nll


@dataclass(frozen=True)
class ScoredSequence:
    """Token ids of context + continuation; the last ``num_scored`` tokens are the continuation."""

    tokens: tuple[int, ...]
    num_scored: int

    def __len__(self) -> int:
        return len(self.tokens)


def _encode(tokenizer, text: str) -> list[int]:
    # the tokenizer's default special tokens, as lm-evaluation-harness's tok_encode uses them
    return list(tokenizer(text)["input_ids"])


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation token ids, split the way lm-evaluation-harness splits them."""
    if not context:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [prefix], list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = _encode(tokenizer, context + continuation)
    context_ids = _encode(tokenizer, context)
    return context_ids, whole[len(context_ids) :]


def scored_sequence(tokenizer, context: str, continuation: str, max_length: int | None = None) -> ScoredSequence:
    context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
    if not continuation_ids:
        raise GispError(f"nothing to score: the continuation {continuation!r} has no tokens after {context[-40:]!r}")
    tokens = context_ids + continuation_ids
    if max_length:  # the model sees at most max_length inputs; the last token is only a target
        tokens = tokens[-(max_length + 1) :]
    return ScoredSequence(tuple(tokens), min(len(continuation_ids), len(tokens) - 1))


def pad_batch(sequences: Sequence[ScoredSequence], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded inputs, next-token targets and the mask of the scored (continuation) targets."""
    width = max(len(s) for s in sequences) - 1
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    targets = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    scored = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, s in enumerate(sequences):
        ids = torch.tensor(s.tokens, dtype=torch.long)
        n = len(s) - 1
        input_ids[row, :n] = ids[:-1]
        targets[row, :n] = ids[1:]
        scored[row, n - s.num_scored : n] = True
    return {"input_ids": input_ids, "targets": targets, "scored": scored}


def continuation_logprobs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: the summed log-probability of its continuation tokens, and their count.

    Carries gradients when called under autograd (the objectives), not under ``no_grad`` (evaluation).
    """
    scored = batch["scored"]
    hidden = model.base_model(input_ids=batch["input_ids"].to(input_device(model)), use_cache=False).last_hidden_state
    picked = hidden[scored.to(hidden.device)]  # (scored positions, hidden): rows in batch order
    token_logp = -token_nll(model, picked, batch["targets"][scored])
    device = token_logp.device
    owner = torch.arange(scored.shape[0]).unsqueeze(1).expand_as(scored)[scored].to(device)
    sums = torch.zeros(scored.shape[0], dtype=token_logp.dtype, device=device).index_add(0, owner, token_logp)
    return sums, scored.sum(dim=1).to(device)


def length_batches(lengths: Sequence[int], max_sequences: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped longest first, so that each batch pads little and stays within the token cap."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]  # the first of a batch is its longest
        if current and (len(current) >= max_sequences or (max_tokens and (len(current) + 1) * width > max_tokens)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def pad_id_of(tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
