"""Independent computations the engine's results are checked against (shared by several test modules)."""

from __future__ import annotations

import numpy as np

from gisp_engine.model.structures import StructureSpace


def reference_scores(loaded, space: StructureSpace, objective, scored_layers) -> np.ndarray:
    """Σ|W⊙ḡ| by plain autograd: whole-model backward, then explicit row/column sums."""
    model = loaded.model
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    total = sum(objective.loss(model, batch) for batch in objective.batches())
    total.backward()
    g, dh = space.geometry, space.geometry.head_dim
    out = np.full(space.size, np.nan)

    def rows(lin, heads):
        total = 0.0
        for h in heads:
            sl = slice(h * dh, (h + 1) * dh)
            total += float((lin.weight.detach()[sl].double() * lin.weight.grad[sl].double()).abs().sum())
            if lin.bias is not None:
                total += float((lin.bias.detach()[sl].double() * lin.bias.grad[sl].double()).abs().sum())
        return total

    def cols(lin, heads):
        w, grad = lin.weight.detach(), lin.weight.grad
        return sum(
            float((w[:, h * dh : (h + 1) * dh].double() * grad[:, h * dh : (h + 1) * dh].double()).abs().sum())
            for h in heads
        )

    for i in scored_layers:
        layer = loaded.adapter.layers(model)[i]
        a, m = loaded.adapter.attention(layer), loaded.adapter.mlp(layer)
        for u in range(space.head_units):
            if space.gqa == "query":
                q_heads, kv_heads = [u], ([] if g.is_gqa else [u])
            else:
                q_heads, kv_heads = list(range(u * g.group_size, (u + 1) * g.group_size)), [u]
            out[space.id(i, "head", u)] = (
                rows(a.q, q_heads) + cols(a.o, q_heads) + rows(a.k, kv_heads) + rows(a.v, kv_heads)
            )
        for c in range(g.intermediate_size):
            gate, up, down = m.gate.weight.detach(), m.up.weight.detach(), m.down.weight.detach()
            w = [(gate[c], m.gate.weight.grad[c]), (up[c], m.up.weight.grad[c]), (down[:, c], m.down.weight.grad[:, c])]
            out[space.id(i, "channel", c)] = sum(float((x.double() * y.double()).abs().sum()) for x, y in w)
    return out
