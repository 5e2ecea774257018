"""The command line: prune -> info -> eval, JSON outputs, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gisp_engine.cli import main


def run_json(capsys, argv: list[str]) -> dict:
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_prune_info_eval_round_trip(tiny_llama, data_dir, capsys, tmp_path):
    common = [
        "--model",
        str(tiny_llama),
        "--num-samples",
        "4",
        "--seq-len",
        "32",
        "--steps",
        "4",
        "--max-sparsity",
        "0.4",
        "--protect-first",
        "1",
        "--quiet",
    ]
    summary = run_json(capsys, ["prune", *common])
    assert summary["cache_hit"] is False and os.path.isdir(summary["path"])
    assert [s["step"] for s in summary["steps"]] == [0, 1, 2, 3, 4]
    again = run_json(capsys, ["prune", *common, "--out", str(tmp_path / "copy")])
    assert again["cache_hit"] is True and again["path"] == str(tmp_path / "copy")

    target = summary["steps"][2]["param_sparsity"]
    info = run_json(capsys, ["info", summary["path"], "--at", str(target + 1e-4)])
    assert info["at"]["step"] == 2 and info["at"]["param_sparsity"] == pytest.approx(target)
    layers = info["at"]["layers"]
    assert len(layers) == 4 and all(set(layer) == {"heads", "kv_heads", "channels"} for layer in layers)
    # the cache key works as a reference too
    assert run_json(capsys, ["info", summary["key"]])["key"] == summary["key"]

    dense = run_json(capsys, ["eval", "--model", str(tiny_llama), "--task", "wikitext2", "--limit", "4", "--quiet"])
    pruned = run_json(
        capsys,
        [
            "eval",
            "--model",
            str(tiny_llama),
            "--trajectory",
            summary["path"],
            "--sparsity",
            str(target + 1e-4),
            "--limit",
            "4",
            "--quiet",
        ],
    )
    # the evaluation of a trajectory point is remembered where the explorer draws it on its curve
    from gisp_engine.evaluation.checks import load_evaluations
    from gisp_engine.pruning.trajectory import Trajectory

    rows = load_evaluations(Trajectory.load(summary["path"]))
    assert [(r["task"], r["step"], r["value"]) for r in rows] == [("wikitext2", 2, pruned["perplexity"])]
    assert pruned["cached"] is False
    again = run_json(
        capsys,
        ["eval", "--model", str(tiny_llama), "--trajectory", summary["path"], "--step", "2", "--limit", "4", "--quiet"],
    )
    assert again["cached"] is True and again["perplexity"] == pruned["perplexity"]
    assert dense["seq_len"] == 128 and dense["windows"] == 4 and dense["param_sparsity"] == 0.0
    assert pruned["step"] == 2 and pruned["param_sparsity"] == pytest.approx(target)
    assert dense["perplexity"] > 1 and pruned["perplexity"] > 1 and dense["perplexity"] != pruned["perplexity"]


def test_errors_exit_2_with_one_line(tiny_llama, capsys):
    assert main(["prune", "--model", str(tiny_llama), "--steps", "0", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gisp: error: --steps")
    assert main(["info", "no-such-trajectory"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_llama), "--sparsity", "0.3"]) == 2
    assert "need --trajectory" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path):
    env = dict(os.environ, GISP_CACHE_DIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "gisp_engine", "cache", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"trajectories": []}
    proc = subprocess.run(
        [sys.executable, "-m", "gisp_engine", "prune", "--max-sparsity", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2 and "--max-sparsity must be a fraction" in proc.stderr
