"""Interrupted runs resume from their last completed step and give the same trajectory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gisp_engine import PruneConfig, Trajectory, prune
from gisp_engine.core.errors import GispError
from gisp_engine.pruning.cache import list_cached, partial_path
from gisp_engine.pruning.pruner import LoopState, plan
from gisp_engine.pruning.trajectory import decode_scores, encode_scores


def assert_same_trajectory(a: Trajectory, b: Trajectory) -> None:
    np.testing.assert_array_equal(a.removal_step, b.removal_step)
    np.testing.assert_array_equal(a.score, b.score)
    if a.scores is not None or b.scores is not None:  # as stored (float16 with a scale per step): one in memory
        as_stored = lambda x: decode_scores(*encode_scores(x))  # noqa: E731
        np.testing.assert_array_equal(as_stored(a.scores), as_stored(b.scores))
    strip = lambda r: {k: v for k, v in r.__dict__.items() if k != "wall_s"}  # noqa: E731
    assert [strip(r) for r in a.steps] == [strip(r) for r in b.steps]


class Interrupt(Exception):
    pass


def test_resume_after_an_exception_matches_uninterrupted(tiny_llama, data_dir):
    config = PruneConfig(
        model=str(tiny_llama),
        num_samples=4,
        seq_len=32,
        steps=6,
        max_sparsity=0.45,
        protect_first=1,
        dtype="float32",
        save_scores=True,
    )

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


# `gisp` whose loop checkpoints are watched: each step saved is written down (events/saved-<step>), and with
# a hold step the process stops right after saving that step, until it is killed (no timing in the test)
WATCHED = r"""
import os, sys, time
from pathlib import Path
events, hold, argv = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
from gisp_engine.pruning import pruner
from gisp_engine.cli import main

save = pruner.LoopState.save

def watched_save(self, folder, key):
    save(self, folder, key)
    (events / f".saved-{self.done}").write_text("")
    os.replace(events / f".saved-{self.done}", events / f"saved-{self.done}")
    while self.done == hold:
        time.sleep(1)

pruner.LoopState.save = watched_save
sys.exit(main(argv))
"""


def _watched(events: Path, hold: int, argv: list[str]) -> list[str]:
    events.mkdir(exist_ok=True)
    return [sys.executable, "-c", WATCHED, str(events), str(hold), *argv]


def _saved_steps(events: Path) -> list[int]:
    return sorted(int(p.name.removeprefix("saved-")) for p in events.glob("saved-*"))


def test_sigkill_mid_run_then_resume(tiny_llama, tmp_path, data_dir):
    """A real kill -9 of the CLI held after step 2; --resume says so, runs steps 3-6 only, and equals a fresh run."""
    argv = [
        "prune",
        "--model",
        str(tiny_llama),
        "--num-samples",
        "4",
        "--seq-len",
        "32",
        "--steps",
        "6",
        "--max-sparsity",
        "0.45",
        "--protect-first",
        "1",
        "--dtype",
        "float32",
        "--json",
    ]
    config = PruneConfig(
        model=str(tiny_llama), num_samples=4, seq_len=32, steps=6, max_sparsity=0.45, protect_first=1, dtype="float32"
    )
    key = plan(config).key
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _watched(killed, 2, argv + ["--quiet"]),
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (killed / "saved-2").exists():  # the hook holds the run there: no race with the kill
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "step 2 was never checkpointed"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert _saved_steps(killed) == [1, 2]
    state = LoopState.load(partial_path(key), key)
    assert state is not None and state.done == 2 and [r.step for r in state.steps] == [0, 1]
    assert list_cached() == []

    resumed_events = tmp_path / "resumed"
    resumed = subprocess.run(
        _watched(resumed_events, -1, argv + ["--resume"]),
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "gisp: resuming after step 2 of 6" in resumed.stderr
    assert _saved_steps(resumed_events) == [3, 4, 5, 6], "only the steps after the checkpoint are recomputed"
    assert not partial_path(key).exists()
    fresh = prune(config, use_cache=False).trajectory
    assert_same_trajectory(Trajectory.load(json.loads(resumed.stdout)["path"]), fresh)


DAMAGES = {
    "truncated arrays": lambda f: (f / "state.safetensors").write_bytes((f / "state.safetensors").read_bytes()[:40]),
    "arrays gone": lambda f: (f / "state.safetensors").unlink(),
    "not JSON": lambda f: (f / "state.json").write_text((f / "state.json").read_text()[:25]),
    "another request": lambda f: (f / "state.json").write_text(
        json.dumps(dict(json.loads((f / "state.json").read_text()), key="0" * 20))
    ),
    "steps unreadable": lambda f: (f / "state.json").write_text(
        json.dumps(dict(json.loads((f / "state.json").read_text()), steps=[{"nope": 1}]))
    ),
}


def test_a_bad_checkpoint_is_said_in_one_line_and_the_run_starts_over(tiny_llama, data_dir, tmp_path):
    config = PruneConfig(
        model=str(tiny_llama), num_samples=4, seq_len=32, steps=3, max_sparsity=0.3, protect_first=1, dtype="float32"
    )
    key = plan(config).key

    def stop_after_2(event):
        if event.phase == "step" and event.done == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        prune(config, progress=stop_after_2, use_cache=False)
    folder = partial_path(key)
    assert LoopState.load(folder, key).done == 2
    good = shutil.copytree(folder, tmp_path / "good")
    for damage, do in DAMAGES.items():
        shutil.rmtree(folder)
        shutil.copytree(good, folder)
        do(folder)
        with pytest.raises(GispError, match="cannot be resumed") as caught:
            LoopState.load(folder, key)
        assert "\n" not in str(caught.value) and str(folder) in str(caught.value), damage

    events = []  # the last damage on disk: the run says so once, in one line, and computes every step
    resumed = prune(config, progress=events.append, resume=True, use_cache=False).trajectory
    said = [e.message for e in events if "cannot be resumed" in e.message]
    assert len(said) == 1 and said[0].endswith("starting from step 1") and "\n" not in said[0]
    assert not any("resuming after" in e.message for e in events)
    assert min(e.step for e in events if e.phase == "score") == 1
    assert_same_trajectory(resumed, prune(config, use_cache=False).trajectory)
    assert LoopState.load(folder, key) is None, "no checkpoint at all is not an error"
