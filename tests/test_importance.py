"""The engine's hook-based scores equal a direct autograd computation of Σ|W ⊙ ḡ|."""

from __future__ import annotations

import numpy as np
import pytest
from reference import reference_scores

from gisp_engine import PruneConfig, load_model
from gisp_engine.model.structures import StructureSpace
from gisp_engine.model.surgery import full_layout
from gisp_engine.pruning.importance import score_structures
from gisp_engine.pruning.objectives import objective_spec


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
