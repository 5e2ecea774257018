"""Wanda-sp: Σ |W|·‖X‖ over the structure's ``o_proj``/``down_proj`` input columns, cut within each layer."""

from __future__ import annotations

import numpy as np
import torch

from ._activations import assemble, input_statistics
from ._base import Method, Scores, Scoring, only_scored
from ._selection import PER_LAYER


class WandaSp(Method):
    name = "wanda-sp"
    selection = PER_LAYER

    @torch.no_grad()
    def scores(self, scoring: Scoring) -> Scores:
        space, adapter, g = scoring.space, scoring.adapter, scoring.space.geometry
        stats = input_statistics(scoring.model, adapter, scoring.objective, scoring.scored_layers)

        def per_layer(i: int) -> tuple[np.ndarray, np.ndarray]:
            layer = adapter.layers(scoring.model)[i]
            per_block = {}
            for key, weight in (("o", adapter.attention(layer).o.weight), ("down", adapter.mlp(layer).down.weight)):
                _, _, squares = stats[(i, key)]
                w = weight.detach().double()
                per_block[key] = (w.abs() * squares.sqrt().to(w.device)[None, :]).sum(0).cpu().numpy()
            return per_block["o"].reshape(g.num_heads, g.head_dim).sum(1), per_block["down"]

        return Scores(only_scored(scoring, assemble(space, scoring.scored_layers, per_layer, np.sum)))


METHOD = WandaSp()
