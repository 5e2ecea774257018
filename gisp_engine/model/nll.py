"""Next-token NLL through the LM head in chunks: what the objectives and the evaluators share.

Below :mod:`gisp_engine.pruning.objectives` and :mod:`gisp_engine.model.loglik` (both import it; it imports
neither), so that the two never import each other.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

#: Logit elements computed at once by ``sequence_nll`` (rows = this // vocabulary size).
LOGIT_CHUNK_ELEMENTS = 1 << 25


def input_device(model: torch.nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


def token_nll(model: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """NLL of ``targets`` (rows) given final hidden states (rows x hidden size), through the LM head.

    The head and the cross-entropy run over chunks of rows, and with gradients each chunk's
    logits are recomputed in the backward pass instead of being kept: the full
    (positions x vocabulary) logits never exist at once.
    """
    head = model.get_output_embeddings()
    rows = max(64, LOGIT_CHUNK_ELEMENTS // head.weight.shape[0])

    def chunk_nll(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = head(h).float()  # with --device-map auto the head may sit on another GPU than the input
        return torch.nn.functional.cross_entropy(logits, t.to(logits.device), reduction="none")

    pieces = []
    for start in range(0, hidden.shape[0], rows):
        h, t = hidden[start : start + rows], targets[start : start + rows]
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(chunk_nll, h, t, use_reentrant=False))
        else:
            pieces.append(chunk_nll(h, t))
    return torch.cat(pieces)


def sequence_nll(
    model: torch.nn.Module, input_ids: torch.Tensor, loss_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean next-token NLL of each sequence (over the positions ``loss_mask`` selects)."""
    input_ids = input_ids.to(input_device(model))
    hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
    batch, length = hidden.shape[:2]
    nll = token_nll(model, hidden.reshape(batch * length, -1), input_ids[:, 1:].reshape(-1)).view(batch, length)
    if loss_mask is None:
        return nll.mean(dim=1)
    mask = loss_mask[:, 1:].to(device=nll.device, dtype=nll.dtype)
    return (nll * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
