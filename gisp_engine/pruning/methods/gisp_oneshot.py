"""GISP's normalized score computed once, on the dense model: every step equals ``--steps 1`` at its sparsity."""

from __future__ import annotations

import numpy as np

from ...model.surgery import full_layout
from ..importance import score_structures
from ._base import Method, Scores, Scoring, only_scored
from ._selection import GLOBAL


def dense_taylor(scoring: Scoring) -> np.ndarray:
    """Σ|W ⊙ ḡ| of every structure on the dense model (0 outside the scored layers)."""
    raw = score_structures(
        scoring.model,
        scoring.adapter,
        scoring.space,
        full_layout(scoring.space),
        scoring.objective,
        scoring.scored_layers,
    ).raw
    return np.nan_to_num(raw, nan=0.0)


class GispOneshot(Method):
    name = "gisp-oneshot"
    selection = GLOBAL
    uses_gradients = True

    def scores(self, scoring: Scoring) -> Scores:
        return Scores(only_scored(scoring, dense_taylor(scoring) / scoring.divisors))


METHOD = GispOneshot()
