"""Interrupted runs resume from their last completed step and give the same trajectory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from gisp_engine import PruneConfig, Trajectory, prune
from gisp_engine.cache import list_cached, partial_path
from gisp_engine.pruner import plan
from tiny import make_tiny_model


def assert_same_trajectory(a: Trajectory, b: Trajectory) -> None:
    np.testing.assert_array_equal(a.removal_step, b.removal_step)
    np.testing.assert_array_equal(a.score, b.score)
    if a.scores is not None or b.scores is not None:
        np.testing.assert_array_equal(a.scores, b.scores)
    strip = lambda r: {k: v for k, v in r.__dict__.items() if k != "wall_s"}  # noqa: E731
    assert [strip(r) for r in a.steps] == [strip(r) for r in b.steps]


class Interrupt(Exception):
    pass


def test_resume_after_an_exception_matches_uninterrupted(tiny_llama, data_dir):
    config = PruneConfig(model=str(tiny_llama), num_samples=4, seq_len=32, steps=6, max_sparsity=0.45,
                         protect_first=1, dtype="float32", save_scores=True)

    def stop_after_3(event):
        if event.phase == "step" and event.done == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        prune(config, progress=stop_after_3, use_cache=False)
    key = plan(config).key
    state = json.loads((partial_path(key) / "state.json").read_text())
    assert state["done"] == 3 and [r["step"] for r in state["steps"]] == [0, 1, 2]
    assert list_cached() == [], "an unfinished run must not be listed"

    events = []
    resumed = prune(config, progress=events.append, use_cache=False, resume=True).trajectory
    assert any("resuming after step 3" in e.message for e in events)
    assert min(e.step for e in events if e.phase == "score") == 4, "steps 1-3 must not be recomputed"
    assert not partial_path(key).exists(), "the checkpoint goes once the trajectory is saved"
    reference = prune(config, use_cache=False).trajectory
    assert_same_trajectory(resumed, reference)


def test_sigkill_mid_run_then_resume(tmp_path, data_dir):
    """A real kill -9 of the CLI between steps; --resume finishes it, element for element equal."""
    folder = make_tiny_model(tmp_path / "model", "llama", gqa=True, layers=6, hidden=64, heads=4, intermediate=256)
    args = [sys.executable, "-m", "gisp_engine", "prune", "--model", str(folder), "--num-samples", "32",
            "--seq-len", "64", "--steps", "12", "--max-sparsity", "0.6", "--protect-first", "1",
            "--dtype", "float32", "--quiet", "--json"]
    env = dict(os.environ)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    config = PruneConfig(model=str(folder), num_samples=32, seq_len=64, steps=12, max_sparsity=0.6,
                         protect_first=1, dtype="float32")
    state_file = partial_path(plan(config).key) / "state.json"
    deadline = time.time() + 300
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if state_file.is_file():
            try:
                done = json.loads(state_file.read_text())["done"]
            except (OSError, ValueError):
                done = 0
            if done >= 2:
                break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed: make it slower"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert 2 <= done < 12
    assert list_cached() == []

    resumed = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    resumed_traj = Trajectory.load(json.loads(resumed.stdout)["path"])
    fresh = subprocess.run(args + ["--no-cache", "--out", str(tmp_path / "fresh")], env=env, capture_output=True,
                           text=True, timeout=600)
    assert fresh.returncode == 0, fresh.stderr
    assert_same_trajectory(resumed_traj, Trajectory.load(tmp_path / "fresh"))
