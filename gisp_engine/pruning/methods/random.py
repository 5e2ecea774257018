"""Seeded uniform random scores, cut within each layer: the floor every method must clear."""

from __future__ import annotations

import numpy as np

from ._base import Method, Scores, Scoring, only_scored
from ._selection import PER_LAYER


class Random(Method):
    name = "random"
    selection = PER_LAYER

    def scores(self, scoring: Scoring) -> Scores:
        return Scores(only_scored(scoring, np.random.default_rng(scoring.seed).random(scoring.space.size)))


METHOD = Random()
