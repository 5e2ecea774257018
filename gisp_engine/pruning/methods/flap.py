"""FLAP (AL-AM, WIFV) as its reference code computes it (CASIA-IVA-Lab/FLAP ``lib/prune.py``,
``prune_flap`` with ``--metrics WIFV --structure AL-AM``); what remains different is listed in the README.

A column's fluctuation is Var(X)·‖W_col‖² over the input features of ``o_proj`` and
``down_proj``. Attention: the o_proj metric is squared, standardized over the layer's columns,
and a head scores the mean of its columns (a KV group: the mean over its query heads' columns).
MLP: the down_proj metric, standardized over the layer's channels. Heads and channels of all
layers then compete in one ranking, cut to a parameter budget. The calibration means of the
inputs are kept (``extras``) for FLAP's bias compensation.
"""

from __future__ import annotations

import numpy as np
import torch

from ._activations import assemble, input_statistics
from ._base import Method, Scores, Scoring, only_scored
from ._selection import PARAM_BUDGET


class Flap(Method):
    name = "flap"
    selection = PARAM_BUDGET
    revision = 2  # as its reference code, cut to a parameter budget

    @torch.no_grad()
    def scores(self, scoring: Scoring) -> Scores:
        space, adapter, g = scoring.space, scoring.adapter, scoring.space.geometry
        stats = input_statistics(scoring.model, adapter, scoring.objective, scoring.scored_layers)

        def per_layer(i: int) -> tuple[np.ndarray, np.ndarray]:
            layer = adapter.layers(scoring.model)[i]
            columns = _standardize(_fluctuation(stats, (i, "o"), adapter.attention(layer).o.weight) ** 2)
            channels = _standardize(_fluctuation(stats, (i, "down"), adapter.mlp(layer).down.weight))
            return columns.reshape(g.num_heads, g.head_dim).mean(1), channels

        values = assemble(space, scoring.scored_layers, per_layer, np.mean)
        return Scores(only_scored(scoring, values), extras=_input_means(space, stats))


def _fluctuation(stats: dict, key: tuple, weight: torch.Tensor) -> np.ndarray:
    """FLAP's WIFV per input column: sample variance of the input feature times the column's squared norm."""
    count, total, squares = stats[key]
    mean = total / count
    var = ((squares - count * mean.pow(2)) / max(count - 1, 1)).clamp_min(0)
    w = weight.detach().double()
    return (var.to(w.device) * w.pow(2).sum(0)).cpu().numpy()


def _standardize(values: np.ndarray) -> np.ndarray:
    """FLAP's ``standarlization``: (x - mean) / std over one layer's columns, std with n - 1 (torch.std)."""
    spread = values.std(ddof=1) if values.size > 1 else 0.0
    return (values - values.mean()) / (spread if spread > 0 else 1.0)


def _input_means(space, stats: dict) -> dict[str, np.ndarray]:
    g = space.geometry
    means = {
        "input_mean_o": np.zeros((g.num_layers, g.num_heads * g.head_dim), np.float32),
        "input_mean_down": np.zeros((g.num_layers, g.intermediate_size), np.float32),
    }
    for (layer, key), (count, total, _) in stats.items():
        means[f"input_mean_{key}"][layer] = (total / count).cpu().numpy()
    return means


METHOD = Flap()
