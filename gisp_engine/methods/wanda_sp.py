"""Wanda-sp: Σ |W|·‖X‖ over the structure's ``o_proj``/``down_proj`` input columns, cut within each layer."""

from __future__ import annotations

import numpy as np
import torch

from ._activations import head_columns, input_statistics
from ._base import Method, Scores, Scoring, only_scored
from ._selection import PER_LAYER


class WandaSp(Method):
    name = "wanda-sp"
    selection = PER_LAYER

    @torch.no_grad()
    def scores(self, scoring: Scoring) -> Scores:
        space, adapter = scoring.space, scoring.adapter
        stats = input_statistics(scoring.model, adapter, scoring.objective, scoring.scored_layers)
        g, dh = space.geometry, space.geometry.head_dim
        out = np.full(space.size, np.nan)
        for i in scoring.scored_layers:
            layer = adapter.layers(scoring.model)[i]
            per_block = {}
            for key, weight in (("o", adapter.attention(layer).o.weight), ("down", adapter.mlp(layer).down.weight)):
                _, _, squares = stats[(i, key)]
                w = weight.detach().double()
                per_block[key] = (w.abs() * squares.sqrt().to(w.device)[None, :]).sum(0).cpu().numpy()
            per_head = per_block["o"].reshape(g.num_heads, dh).sum(1)
            for u in range(space.head_units):
                out[space.id(i, "head", u)] = per_head[head_columns(space, u)].sum()
            out[space.channel_slice(i)] = per_block["down"]
        return Scores(only_scored(scoring, out))


METHOD = WandaSp()
