"""The objective interface: what loss the importance scores are the gradient of.

An objective owns its calibration batches. ``loss`` returns this micro-batch's share of
the objective (already divided by the number of calibration sequences), so that the sum
over micro-batches is the objective and the sum of their gradients is its mean gradient.
The divisors count the whole calibration set, never one rank's share: under torch.distributed
each rank scores every N-th micro-batch (``distributed.shard``) and the sums over ranks are
then the objective and its mean gradient, for every objective alike.

The per-token NLL through the LM head (``sequence_nll``, ``token_nll``) lives a layer below, in
:mod:`gisp_engine.model.nll`, shared with the evaluators.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class ObjectiveSpec:
    """An objective as the registry knows it (``OBJECTIVE`` in its module): what identifies it and how to build it."""

    name: str
    identity: Callable  # (PruneConfig, family) -> dict: everything that determines the calibration signal
    build: Callable  # (LoadedModel, PruneConfig) -> Objective
