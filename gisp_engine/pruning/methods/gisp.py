"""GISP: Σ|W ⊙ ḡ| per structure, divided by its block's constant, recomputed on the pruned model at every step."""

from __future__ import annotations

import numpy as np

from ..importance import score_structures
from ._base import Method, Scores, Scoring
from ._selection import GLOBAL


class Gisp(Method):
    name = "gisp"
    selection = GLOBAL
    rescores = True
    uses_gradients = True

    def scores(self, scoring: Scoring) -> Scores:
        result = score_structures(
            scoring.model,
            scoring.adapter,
            scoring.space,
            scoring.layout,
            scoring.objective,
            scoring.scored_layers,
            scoring.progress,
            scoring.step,
            scoring.total_steps,
        )
        return Scores(np.nan_to_num(result.raw, nan=0.0) / scoring.divisors, loss=result.loss)


METHOD = Gisp()
