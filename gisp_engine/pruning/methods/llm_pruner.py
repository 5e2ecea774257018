"""LLM-Pruner style: the first-order Taylor score Σ|W ⊙ ḡ| on the dense model, unnormalized, cut within each layer."""

from __future__ import annotations

from ._base import Method, Scores, Scoring, only_scored
from ._selection import PER_LAYER
from .gisp_oneshot import dense_taylor


class LlmPruner(Method):
    name = "llm-pruner"
    selection = PER_LAYER
    uses_gradients = True

    def scores(self, scoring: Scoring) -> Scores:
        return Scores(only_scored(scoring, dense_taylor(scoring)))


METHOD = LlmPruner()
