"""The L2 norm of each structure's weights, cut within each layer."""

from __future__ import annotations

import numpy as np
import torch

from ._activations import head_columns
from ._base import Method, Scores, Scoring, only_scored
from ._selection import PER_LAYER


class Magnitude(Method):
    name = "magnitude"
    selection = PER_LAYER

    @torch.no_grad()
    def scores(self, scoring: Scoring) -> Scores:
        space, adapter = scoring.space, scoring.adapter
        g, dh = space.geometry, space.geometry.head_dim
        out = np.full(space.size, np.nan)
        for i in scoring.scored_layers:
            layer = adapter.layers(scoring.model)[i]
            a, m = adapter.attention(layer), adapter.mlp(layer)
            q_rows = a.q.weight.float().pow(2).sum(1).view(g.num_heads, dh).sum(1)
            o_cols = a.o.weight.float().pow(2).sum(0).view(g.num_heads, dh).sum(1)
            kv = (a.k.weight.float().pow(2).sum(1) + a.v.weight.float().pow(2).sum(1)).view(g.num_kv_heads, dh).sum(1)
            per_head = (q_rows + o_cols).cpu().numpy()
            kv = kv.cpu().numpy()
            for u in range(space.head_units):
                total = per_head[head_columns(space, u)].sum()
                if space.gqa == "kv-group" or not g.is_gqa:  # the unit owns its K/V rows
                    total += kv[u]
                out[space.id(i, "head", u)] = np.sqrt(total)
            ch = (
                m.gate.weight.float().pow(2).sum(1)
                + m.up.weight.float().pow(2).sum(1)
                + m.down.weight.float().pow(2).sum(0)
            )
            out[space.channel_slice(i)] = ch.sqrt().cpu().numpy()
        return Scores(only_scored(scoring, out))


METHOD = Magnitude()
