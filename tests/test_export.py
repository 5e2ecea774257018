"""Exported subnetworks: equal to the masked model, loadable three ways, refused when tampered with."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from exporting import (
    CASES,
    NEW_TOKENS,
    STEP,
    case_id,
    flap_trajectory,
    keep_from_manifest,
    masked_outputs,
    run_isolated,
    synthetic_trajectory,
)
from tiny import cache_dir

from gisp_engine import GispError, Trajectory, apply_step, load_model
from gisp_engine.export import remote_code
from gisp_engine.export.hf import MANIFEST, export_subnetwork, load_pruned, uniform_keep_mask
from gisp_engine.model.surgery import mask_

# layer 2 of the synthetic trajectories loses every channel: torch warns when it builds the empty MLP
pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")


@dataclass
class Exported:
    model_dir: Path
    trajectory: Trajectory
    per_layer: Path
    uniform: Path
    x: torch.Tensor
    logits: torch.Tensor  # masked model at the trajectory point
    tokens: torch.Tensor
    uniform_keep: np.ndarray
    uniform_logits: torch.Tensor
    uniform_tokens: torch.Tensor


@pytest.fixture(scope="module")
def exported(tiny_models, tmp_path_factory) -> dict:
    """Every case exported both ways, with the masked model's outputs to compare against."""
    root = tmp_path_factory.mktemp("exports")
    with cache_dir(root / "cache"):  # weights-SHA memo out of the project cache
        out = {}
        for i, case in enumerate(CASES):
            family, gqa, policy = case
            folder = tiny_models[(family, gqa)]
            x = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(i))
            loaded = load_model(str(folder), dtype="float32")
            traj = synthetic_trajectory(loaded, policy, seed=i)
            logits, tokens = masked_outputs(folder, traj.space, traj.keep_mask(STEP), x)
            per_layer = export_subnetwork(loaded, traj, STEP, root / case_id(case) / "per-layer").folder
            loaded = load_model(str(folder), dtype="float32")
            uniform = export_subnetwork(loaded, traj, STEP, root / case_id(case) / "uniform", uniform=True)
            keep = keep_from_manifest(traj.space, uniform.manifest)
            u_logits, u_tokens = masked_outputs(folder, traj.space, keep, x)
            out[case] = Exported(folder, traj, per_layer, uniform.folder, x, logits, tokens, keep, u_logits, u_tokens)
        return out


@pytest.fixture(scope="module")
def isolated_results(exported, tmp_path_factory) -> tuple[dict, dict]:
    """All exports loaded in one fresh process that cannot import this project."""
    jobs = {}
    for case, e in exported.items():
        for kind, folder, remote in (("remote", e.per_layer, True), ("stock", e.uniform, False)):
            jobs[f"{case_id(case)}.{kind}"] = {
                "dir": str(folder),
                "remote": remote,
                "x": e.x.tolist(),
                "new_tokens": NEW_TOKENS,
            }
    return run_isolated(jobs, tmp_path_factory.mktemp("isolated"))


def _manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


# ---- per-layer export ------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_per_layer_export_equals_the_masked_model(exported, case):
    e = exported[case]
    pruned = load_pruned(e.per_layer, device="cpu", dtype="float32")
    with torch.no_grad():
        torch.testing.assert_close(pruned.model(e.x).logits, e.logits, rtol=1e-4, atol=1e-4)
        tokens = pruned.model.generate(e.x[:1], max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    assert torch.equal(tokens, e.tokens)

    m = pruned.manifest
    point = e.trajectory.steps[STEP]
    assert m["kind"] == "per-layer" and m["trajectory"]["step"] == STEP
    assert pruned.param_count == m["param_count"]
    assert m["linear_params"] == point.kept_params and m["param_sparsity"] == pytest.approx(point.param_sparsity)
    assert m["layers"] == e.trajectory.kept(STEP)["layers"]
    assert m["base_model"]["weights_sha256"] == e.trajectory.meta["model"]["weights_sha256"]
    # the only code in the folder is the project's own rendering, and it never imports the project
    code = {name for name in m["files"] if name.endswith(".py")}
    assert code == set(m["remote_code"]["files"]) == {"configuration_gisp.py", "modeling_gisp.py"}
    for name, text in remote_code.render(remote_code.BaseFamily(**m["remote_code"]["base"])).items():
        assert (e.per_layer / name).read_text() == text and "gisp_engine" not in text
    config = json.loads((e.per_layer / "config.json").read_text())
    assert "auto_map" in config and config["gisp_base_model_type"] == case[0]
    assert [spec["num_heads"] for spec in config["gisp_layers"]] == [len(layer["heads"]) for layer in m["layers"]]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_remote_code_loads_without_the_project(exported, isolated_results, case):
    e = exported[case]
    results, tensors = isolated_results
    name = f"{case_id(case)}.remote"
    assert results[name]["class"] == "GispPrunedForCausalLM"
    assert results[name]["params"] == _manifest(e.per_layer)["param_count"]
    torch.testing.assert_close(tensors[name + ".logits"], e.logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(tensors[name + ".tokens"], e.tokens)
    assert results["gisp_engine_imported"] is False


def test_uneven_groups_keep_a_compact_cache(exported):
    """Layer 2 keeps query heads 1-3 over 2 KV heads: the cache holds 2 KV heads, not 3."""
    e = exported[("llama", True, "query")]
    config = json.loads((e.per_layer / "config.json").read_text())
    assert config["gisp_layers"][1]["num_heads"] == 0
    assert config["gisp_layers"][2]["kv_map"] == [0, 1, 1]
    pruned = load_pruned(e.per_layer, device="cpu", dtype="float32")
    layers = pruned.model.model.layers
    assert type(layers[1].self_attn).__name__ == "GispNullAttention"
    assert type(layers[2].self_attn).__name__ == "GispAttention"
    assert layers[2].mlp.gate_proj.out_features == 0  # every channel of layer 2 went too
    with torch.no_grad():
        out = pruned.model(e.x, use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    assert [layer.keys.shape[1] for layer in cache.layers] == [2, 0, 2, 2]
    assert all(layer.keys.shape[2] == e.x.shape[1] for layer in cache.layers)


# ---- uniform export ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_uniform_export_loads_with_stock_code(exported, isolated_results, case):
    e = exported[case]
    m = _manifest(e.uniform)
    widths = m["uniform"]
    assert {len(layer["heads"]) for layer in m["layers"]} == {widths["heads"]}
    assert {len(layer["kv_heads"]) for layer in m["layers"]} == {widths["kv_heads"]}
    assert {len(layer["channels"]) for layer in m["layers"]} == {widths["channels"]}
    assert m["remote_code"] is None and not any(name.endswith(".py") for name in m["files"])
    # its own sparsity, reported exactly; near the trajectory point's but not the point itself
    space = e.trajectory.space
    assert m["param_sparsity"] == pytest.approx(space.param_sparsity(e.uniform_keep))
    assert abs(m["param_sparsity"] - m["trajectory"]["param_sparsity"]) < 0.06
    assert not np.array_equal(e.uniform_keep, e.trajectory.keep_mask(STEP))

    pruned = load_pruned(e.uniform, device="cpu", dtype="float32")
    assert type(pruned.model).__module__.startswith("transformers.models.")
    assert pruned.param_count == m["param_count"]
    with torch.no_grad():
        torch.testing.assert_close(pruned.model(e.x).logits, e.uniform_logits, rtol=1e-4, atol=1e-4)

    results, tensors = isolated_results
    name = f"{case_id(case)}.stock"
    assert results[name]["module"].startswith("transformers.models.") and results[name]["params"] == m["param_count"]
    torch.testing.assert_close(tensors[name + ".logits"], e.uniform_logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(tensors[name + ".tokens"], e.uniform_tokens)


def test_uniform_rule_keeps_the_longest_surviving_structures(exported):
    e = exported[("qwen2", True, "query")]
    traj = e.trajectory
    keep, widths = uniform_keep_mask(traj, STEP)
    space = traj.space
    survival = np.where(traj.removal_step == -1, traj.num_steps + 1, traj.removal_step)
    for layer in range(1, traj.geometry.num_layers - 1):  # scored layers
        ch = space.channel_slice(layer)
        kept, dropped = survival[ch][keep[ch]], survival[ch][~keep[ch]]
        assert kept.size == widths.channels
        assert dropped.size == 0 or kept.min() >= dropped.max()
        heads = keep[space.head_slice(layer)].reshape(traj.geometry.num_kv_heads, -1)
        assert set(heads.sum(1)) <= {0, widths.heads // widths.kv_heads}  # equal groups


# ---- refusals ------------------------------------------------------------------------------------
def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_tampered_or_mismatched_folders_are_refused(exported, tmp_path):
    e = exported[("llama", True, "query")]
    other = exported[("llama", True, "kv-group")]

    def refused(folder: Path, match: str, **kw) -> None:
        with pytest.raises(GispError, match=match):
            load_pruned(folder, device="cpu", **kw)

    refused(tmp_path / "nowhere", "does not exist")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "not a GISP export")

    d = _copy(e.per_layer, tmp_path / "weights")
    blob = bytearray((d / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (d / "model.safetensors").write_bytes(bytes(blob))
    refused(d, "model.safetensors does not match")

    d = _copy(e.per_layer, tmp_path / "config")
    config = json.loads((d / "config.json").read_text())
    config["gisp_layers"][0]["intermediate_size"] -= 1
    (d / "config.json").write_text(json.dumps(config))
    refused(d, "config.json does not match")

    d = _copy(e.per_layer, tmp_path / "missing")
    (d / "tokenizer.json").unlink()
    refused(d, "tokenizer.json is missing")

    d = _copy(e.per_layer, tmp_path / "extra")
    (d / "helper.py").write_text("import os\n")
    refused(d, "did not write: helper.py")

    for code in ("modeling_gisp.py", "configuration_gisp.py"):  # other code, with a manifest that vouches for it
        d = _copy(e.per_layer, tmp_path / f"code-{code}")
        (d / code).write_text("raise SystemExit('not ours')\n")
        m = _manifest(d)
        m["files"][code] = hashlib.sha256((d / code).read_bytes()).hexdigest()
        (d / MANIFEST).write_text(json.dumps(m))
        refused(d, f"{code} is not the modeling code")

    d = _copy(e.per_layer, tmp_path / "mixed")  # the manifest of another export
    shutil.copy(other.per_layer / MANIFEST, d / MANIFEST)
    refused(d, "does not match the export manifest")

    d = _copy(e.per_layer, tmp_path / "count")
    m = _manifest(d)
    m["param_count"] += 1
    (d / MANIFEST).write_text(json.dumps(m))
    refused(d, "parameters, the manifest says")

    refused(e.per_layer, "was pruned from base weights", base_weights_sha256="0" * 64)
    assert (
        load_pruned(
            e.per_layer, device="cpu", base_weights_sha256=e.trajectory.meta["model"]["weights_sha256"]
        ).param_count
        > 0
    )


def test_export_refuses_bad_input(tiny_models, tmp_path):
    folder = tiny_models[("mistral", True)]
    loaded = load_model(str(folder), dtype="float32")
    traj = synthetic_trajectory(loaded, "query")

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(GispError, match="not empty and not a GISP export"):
        export_subnetwork(loaded, traj, 1, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(GispError, match="outside this trajectory's steps"):
        export_subnetwork(loaded, traj, traj.num_steps + 1, tmp_path / "out")

    stranger = load_model(str(tiny_models[("mistral", False)]), dtype="float32")
    with pytest.raises(GispError, match="was built for model"):
        export_subnetwork(stranger, traj, 1, tmp_path / "out")

    apply_step(loaded, traj, 1)  # already sliced: exporting would slice the slice
    with pytest.raises(GispError, match="needs the dense model"):
        export_subnetwork(loaded, traj, 2, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_export(tiny_models, tmp_path, capsys):
    from gisp_engine.cli import main

    folder = tiny_models[("qwen3", True)]
    traj = synthetic_trajectory(load_model(str(folder), dtype="float32"), "query", seed=7)
    traj_dir = traj.save(tmp_path / "trajectory")
    target = traj.steps[2].param_sparsity + 1e-6

    base = ["export", "--model", str(folder), "--trajectory", str(traj_dir), "--quiet"]
    out = tmp_path / "uniform"
    assert main(base + ["--sparsity", str(target), "--out", str(out), "--uniform", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "uniform" and summary["step"] == 2 and summary["path"] == str(out)
    pruned = load_pruned(out, device="cpu")
    assert pruned.param_count == summary["param_count"]
    assert summary["param_sparsity"] == pytest.approx(pruned.manifest["param_sparsity"])

    assert main(base + ["--sparsity", "0.1", "--step", "1", "--out", str(tmp_path / "both")]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(base + ["--sparsity", "0.99", "--out", str(tmp_path / "far")]) == 2
    assert "outside 0 .." in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "neither")]) == 2
    assert "give --sparsity" in capsys.readouterr().err
    assert main(base + ["--step", "1", "--out", str(out / "config.json")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("both", "far", "neither"))


# ---- the embedded model ---------------------------------------------------------------------------
@pytest.mark.real_model
def test_embedded_model_export_equals_masked(embedded_model_dir, tmp_path):
    """SmolLM2-135M at ~32% sparsity: export, load, compare with the masked model.

    In float64 the two agree to 1e-8: the same function. In float32 they agree to 1e-4 of the
    logit scale, not to 1e-4 absolute per logit: this model's residual stream reaches ~3000,
    where one float32 ulp is 2.4e-4, so summing in another order (fewer columns) moves
    individual logits by up to ~1e-3.
    """
    loaded = load_model("smollm2-135m", device="cpu", dtype="float32")
    traj = synthetic_trajectory(loaded, "query", seed=3)
    point = traj.steps[STEP]
    assert 0.2 < point.param_sparsity < 0.5
    x = loaded.tokenizer(
        ["The quick brown fox jumps over the lazy dog near the river bank."], return_tensors="pt"
    ).input_ids
    result = export_subnetwork(loaded, traj, STEP, tmp_path / "smollm2")
    pruned = load_pruned(result.folder, device="cpu", dtype="float32")
    assert pruned.param_count == result.param_count
    assert pruned.manifest["linear_params"] == point.kept_params
    assert any(spec["kv_map"] for spec in pruned.model.config.gisp_layers)  # uneven groups are exercised
    with torch.no_grad():
        in_place = loaded.model(x).logits  # the model the export sliced in place
        exported32 = pruned.model(x).logits
    del loaded
    torch.testing.assert_close(exported32, in_place, rtol=1e-5, atol=1e-5)

    masked = load_model("smollm2-135m", device="cpu", dtype="float32")
    apply_step(masked, traj, STEP, physical=False)
    with torch.no_grad():
        masked32 = masked.model(x).logits
        masked64 = masked.model.double()(x).logits
    del masked
    with torch.no_grad():
        exported64 = pruned.model.double()(x).logits
    torch.testing.assert_close(exported64, masked64, rtol=0, atol=1e-8)
    assert (exported32 - masked32).abs().max() <= 1e-4 * masked32.abs().max()


def _compensated_masked_logits(folder: Path, traj: Trajectory, keep: np.ndarray, x: torch.Tensor) -> torch.Tensor:
    from gisp_engine.pruning.subnetwork import add_biases, compensation_biases

    masked = load_model(str(folder), dtype="float32")
    biases = compensation_biases(masked, traj, keep)  # W[:, removed] @ mean, from the dense weights
    mask_(masked.model, masked.adapter, traj.space, keep)
    add_biases(masked, biases)
    with torch.no_grad():
        return masked.model(x).logits


def test_flap_exports_carry_the_bias_compensation(tiny_models, tmp_path):
    """Both kinds of export hold FLAP's biases: each equals the masked model with the same biases."""
    from safetensors import safe_open

    folder = tiny_models[("llama", True)]
    x = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(5))
    traj = flap_trajectory(load_model(str(folder), dtype="float32"))

    result = export_subnetwork(load_model(str(folder), dtype="float32"), traj, STEP, tmp_path / "per-layer")
    assert result.manifest["bias_compensation"] is True
    with safe_open(str(result.folder / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    # layer 1 lost every head: its attention is a constant bias of its own
    assert {
        "model.layers.1.self_attn.bias",
        "model.layers.2.self_attn.o_proj.bias",
        "model.layers.2.mlp.down_proj.bias",
    } <= names
    pruned = load_pruned(result.folder, device="cpu", dtype="float32")
    expected = _compensated_masked_logits(folder, traj, traj.keep_mask(STEP), x)
    plain = masked_outputs(folder, traj.space, traj.keep_mask(STEP), x)[0]
    with torch.no_grad():
        logits = pruned.model(x).logits
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert (logits - plain).abs().max() > 1e-2  # the biases are not zeros

    loaded = load_model(str(folder), dtype="float32")
    uniform = export_subnetwork(loaded, traj, STEP, tmp_path / "uniform", uniform=True)
    config = json.loads((uniform.folder / "config.json").read_text())
    assert uniform.manifest["bias_compensation"] is True and config["attention_bias"] and config["mlp_bias"]
    pruned = load_pruned(uniform.folder, device="cpu", dtype="float32")  # stock code
    assert type(pruned.model).__module__.startswith("transformers.models.llama")
    keep = keep_from_manifest(traj.space, uniform.manifest)
    with torch.no_grad():
        logits = pruned.model(x).logits
    torch.testing.assert_close(logits, _compensated_masked_logits(folder, traj, keep, x), rtol=1e-4, atol=1e-4)

    # left out on request; a stock family without an o_proj/down_proj bias refuses the uniform kind
    plain_export = export_subnetwork(
        load_model(str(folder), dtype="float32"), traj, STEP, tmp_path / "plain", bias_compensation=False
    )
    assert plain_export.manifest["bias_compensation"] is False
    with torch.no_grad():
        torch.testing.assert_close(
            load_pruned(plain_export.folder, device="cpu", dtype="float32").model(x).logits, plain, rtol=1e-4, atol=1e-4
        )
    mistral = tiny_models[("mistral", True)]
    flap_mistral = flap_trajectory(load_model(str(mistral), dtype="float32"))
    with pytest.raises(GispError, match="no switch for an o_proj and down_proj bias"):
        export_subnetwork(load_model(str(mistral), dtype="float32"), flap_mistral, STEP, tmp_path / "m", uniform=True)
    assert not (tmp_path / "m").exists()
