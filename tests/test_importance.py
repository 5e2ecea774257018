"""The engine's hook-based scores equal a direct autograd computation of Σ|W ⊙ ḡ|."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gisp_engine import PruneConfig, load_model
from gisp_engine.importance import score_structures
from gisp_engine.objectives import objective_spec
from gisp_engine.structures import StructureSpace
from gisp_engine.surgery import full_layout


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


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
@pytest.mark.parametrize("gqa_model", [True, False], ids=["gqa", "mha"])
@pytest.mark.parametrize("policy", ["query", "kv-group"])
def test_scores_equal_direct_autograd(tiny_models, data_dir, family, gqa_model, policy):
    folder = tiny_models[(family, gqa_model)]
    config = PruneConfig(model=str(folder), num_samples=6, seq_len=24, gqa=policy, batch_size=4, dtype="float32")
    ref_model = load_model(str(folder), dtype="float32")
    objective = objective_spec("perplexity").build(ref_model, config)
    space = StructureSpace(ref_model.geometry, policy)
    scored = [1, 2]
    expected = reference_scores(ref_model, space, objective, scored)

    loaded = load_model(str(folder), dtype="float32")
    result = score_structures(loaded.model, loaded.adapter, space, full_layout(space), objective, scored)

    assert np.isnan(result.raw[space.layer == 0]).all() and np.isnan(result.raw[space.layer == 3]).all()
    mask = np.isin(space.layer, scored)
    np.testing.assert_allclose(result.raw[mask], expected[mask], rtol=2e-5, atol=1e-9)
    assert (result.raw[mask] > 0).all()
    # no gradient is left behind, and requires_grad is as it was
    assert all(p.grad is None for p in loaded.model.parameters())
    assert all(p.requires_grad for p in loaded.model.parameters())


def test_micro_batching_does_not_change_scores(tiny_llama, data_dir):
    """|W ⊙ mean gradient|, not the mean of |W ⊙ gradient|: micro-batch size must not matter."""
    results = []
    for batch_size in (1, 3, 6):
        config = PruneConfig(model=str(tiny_llama), num_samples=6, seq_len=24, batch_size=batch_size, dtype="float32")
        loaded = load_model(str(tiny_llama), dtype="float32")
        objective = objective_spec("perplexity").build(loaded, config)
        assert len(objective.batches()) == -(-6 // batch_size)
        space = StructureSpace(loaded.geometry, "query")
        results.append(score_structures(loaded.model, loaded.adapter, space, full_layout(space), objective, [1, 2]))
    for other in results[1:]:
        np.testing.assert_allclose(other.raw, results[0].raw, rtol=1e-5, equal_nan=True)
        assert other.loss == pytest.approx(results[0].loss, rel=1e-6)
