"""The embedded SmolLM2-135M with real calibration text and real WikiText-2 (CPU-sized)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gisp_engine import PruneConfig, apply_step, load_model, prune, wikitext2_perplexity
from gisp_engine.model.structures import StructureSpace
from gisp_engine.model.surgery import full_layout, linear_weight_count
from gisp_engine.pruning.importance import score_structures
from gisp_engine.pruning.objectives import objective_spec

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smol(embedded_model_dir):
    return load_model(str(embedded_model_dir), dtype="float32")


def test_embedded_model_is_real_and_converted(embedded_model_dir, smol):
    config = json.loads((embedded_model_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    g = smol.geometry
    assert (g.num_layers, g.num_heads, g.num_kv_heads, g.head_dim, g.intermediate_size) == (30, 9, 3, 64, 1536)
    ids = smol.tokenizer("The capital of France is", return_tensors="pt")
    out = smol.model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert "Paris" in smol.tokenizer.decode(out[0])
    assert linear_weight_count(smol.model, smol.adapter) == StructureSpace(g).total_linear_params() == 30 * 3_538_944


def test_real_scores_match_direct_autograd(embedded_model_dir, data_dir):
    from reference import reference_scores

    config = PruneConfig(model=str(embedded_model_dir), num_samples=2, seq_len=32, dtype="float32")
    reference_model = load_model(str(embedded_model_dir), dtype="float32")
    objective = objective_spec("perplexity").build(reference_model, config)
    space = StructureSpace(reference_model.geometry, "query")
    expected = reference_scores(reference_model, space, objective, [7])
    del reference_model
    loaded = load_model(str(embedded_model_dir), dtype="float32")
    got = score_structures(loaded.model, loaded.adapter, space, full_layout(space), objective, [7]).raw
    mask = space.layer == 7
    np.testing.assert_allclose(got[mask], expected[mask], rtol=1e-4)


def test_real_run_perplexity_rises_with_sparsity(embedded_model_dir, data_dir):
    outcome = prune(PruneConfig(model="smollm2-135m", num_samples=8, seq_len=64, steps=4, max_sparsity=0.4))
    traj = outcome.trajectory
    assert traj.meta["model"]["id"] == "smollm2-135m" and traj.meta["settings"]["protected_layers"] == [0, 1, 2, 29]
    losses = [r.loss for r in traj.steps]
    assert losses[-1] > losses[0] and 2.0 < losses[0] < 6.0
    assert 0.3 < traj.max_param_sparsity < 0.4
    perplexities = []
    for step in (0, 2, 4):
        loaded = load_model("smollm2-135m", dtype="float32")
        apply_step(loaded, traj, step)
        perplexities.append(wikitext2_perplexity(loaded.model, loaded.tokenizer, seq_len=128, limit=16).perplexity)
    assert 5 < perplexities[0] < 80, perplexities  # the dense 135M model on 128-token windows
    assert perplexities[0] < perplexities[1] < perplexities[2], perplexities
