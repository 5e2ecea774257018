"""The interface between the pruning loop and a method: what a method reads, what it returns.

The loop asks a method for the scores of the current model (lower is removed earlier), and
whether it re-scores (``rescores``): an iterative method is asked again after every step, a
fixed-ranking method once, on the dense model. Which structures a step removes is its
``selection``'s business (``_selection``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ...core.progress import ProgressCallback, null_progress
from ...model.structures import StructureSpace
from ._selection import Selection


@dataclass
class Scoring:
    """What a method may read when it scores: the model as it is now and the run's settings."""

    model: Any  # torch.nn.Module
    adapter: Any  # adapters.DecoderAdapter
    space: StructureSpace
    objective: Any  # objectives.Objective
    scored_layers: Sequence[int]
    divisors: np.ndarray  # the normalization constant of every structure's block
    seed: int = 0
    layout: Sequence | None = None  # surgery.LayerKeep per layer (None: the dense model)
    progress: ProgressCallback = null_progress
    step: int | None = None
    total_steps: int | None = None


@dataclass
class Scores:
    values: np.ndarray  # one per structure; lower is removed earlier; NaN outside the scored layers
    loss: float | None = None  # the objective on the model scored, when scoring computed it on the way
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # kept in the trajectory (FLAP: input means)


class Method:
    """One pruning method. Subclasses set ``name``, ``selection`` and ``scores``; one module each."""

    name: ClassVar[str]
    selection: ClassVar[Selection]
    rescores: ClassVar[bool] = False  # True: scored again on the pruned model at every step
    revision: ClassVar[int | None] = None  # bumped when results change, so earlier cache entries are not reused
    uses_gradients: ClassVar[bool] = False  # scores need a backward pass (what a run's memory estimate depends on)

    def scores(self, scoring: Scoring) -> Scores:
        raise NotImplementedError

    def describe(self) -> str:
        if self.rescores:
            return "iterative: scores recomputed on the pruned model at every step"
        return (
            f"fixed ranking ({self.name}): scores computed once on the dense model; every step is a prefix "
            f"of one {self.selection.name} order"
        )


def only_scored(scoring: Scoring, values: np.ndarray) -> np.ndarray:
    """``values`` with NaN outside the scored layers."""
    return np.where(np.isin(scoring.space.layer, list(scoring.scored_layers)), values, np.nan)
