"""The objective interface: what loss the importance scores are the gradient of.

An objective owns its calibration batches. ``loss`` returns this micro-batch's share of
the objective (already divided by the number of calibration sequences), so that the sum
over micro-batches is the objective and the sum of their gradients is its mean gradient.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch


class Objective(ABC):
    name: str = ""

    @abstractmethod
    def batches(self) -> Sequence[dict]:
        """Micro-batches of CPU tensors, in a fixed order."""

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        """This micro-batch's contribution to the objective (a scalar that carries gradients)."""

    @abstractmethod
    def describe(self) -> dict:
        """Everything that identifies the calibration signal, for metadata and the cache key."""

    def summary(self, value: float) -> dict:
        """Readable figures derived from the objective's value (e.g. perplexity)."""
        return {}


def input_device(model: torch.nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


def sequence_nll(model: torch.nn.Module, input_ids: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token NLL of each sequence (over the positions ``loss_mask`` selects)."""
    device = input_device(model)
    input_ids = input_ids.to(device)
    logits = model(input_ids=input_ids, use_cache=False).logits[:, :-1].float()
    targets = input_ids[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    if loss_mask is None:
        return nll.mean(dim=1)
    mask = loss_mask[:, 1:].to(device=device, dtype=nll.dtype)
    return (nll * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
