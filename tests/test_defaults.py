"""Defaults taken from the trajectory: the model it records, and the base checkpoint's dtype for export."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from tiny import make_tiny_model

from gisp_engine import GispError, PruneConfig, prune
from gisp_engine.cli import main
from gisp_engine.pruning.subnetwork import recorded_checkpoint_dtype, recorded_model


@pytest.fixture(scope="module")
def tiny_bf16(tmp_path_factory):
    """A tiny Llama whose checkpoint is stored in bfloat16."""
    return make_tiny_model(tmp_path_factory.mktemp("bf16") / "llama-bf16", "llama", seed=7, dtype=torch.bfloat16)


def _trajectory(folder):
    return prune(
        PruneConfig(
            model=str(folder), num_samples=4, seq_len=32, steps=2, max_sparsity=0.3, protect_first=1, dtype="float32"
        )
    ).trajectory


def _run_json(capsys, argv: list[str]) -> dict:
    assert main(argv + ["--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


def test_recorded_model_and_checkpoint_dtype(tiny_llama, tiny_bf16, data_dir):
    traj = _trajectory(tiny_bf16)
    assert recorded_model(traj) == str(tiny_bf16)
    # older trajectories without settings still name their model
    settings_less = replace(traj, meta={k: v for k, v in traj.meta.items() if k != "settings"})
    assert recorded_model(settings_less) == str(tiny_bf16)
    with pytest.raises(GispError, match="does not record its model"):
        recorded_model(replace(traj, meta={}))
    assert recorded_checkpoint_dtype(str(tiny_bf16)) == "bfloat16"
    assert recorded_checkpoint_dtype(str(tiny_llama)) == "float32"


def test_eval_and_export_load_the_recorded_model_and_keep_bf16(tiny_bf16, data_dir, capsys, tmp_path):
    traj = _trajectory(tiny_bf16)
    # no --model: the trajectory's own folder is loaded (the embedded model would fail its weights check)
    row = _run_json(
        capsys,
        [
            "eval",
            "--trajectory",
            str(traj.path),
            "--step",
            "1",
            "--task",
            "wikitext2",
            "--limit",
            "2",
            "--dtype",
            "float32",
        ],
    )
    assert row["model"] == str(tiny_bf16) and row["step"] == 1

    out = tmp_path / "export"
    summary = _run_json(
        capsys, ["export", "--trajectory", str(traj.path), "--step", "2", "--out", str(out), "--device", "cpu"]
    )
    manifest = json.loads((out / "gisp_manifest.json").read_text())
    assert summary["path"] == str(out) and manifest["base_model"]["id"] == str(tiny_bf16)
    assert manifest["dtype"] == "bfloat16" and json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(name).dtype for name in f.keys()}
    assert dtypes == {torch.bfloat16}

    # an explicit --dtype still wins
    summary = _run_json(
        capsys,
        [
            "export",
            "--trajectory",
            str(traj.path),
            "--step",
            "2",
            "--out",
            str(tmp_path / "f32"),
            "--device",
            "cpu",
            "--dtype",
            "float32",
        ],
    )
    assert json.loads((tmp_path / "f32" / "gisp_manifest.json").read_text())["dtype"] == "float32"
