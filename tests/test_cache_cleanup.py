"""The cache commands' real delete path: live work survives, finished work goes; locks give up when told."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from gisp_engine import PruneConfig, prune
from gisp_engine.cli import main
from gisp_engine.core.errors import GispError
from gisp_engine.core.fsutil import TMP_MARK, atomic_write_json
from gisp_engine.jobs import background as jobs
from gisp_engine.pruning import cache
from gisp_engine.pruning.pruner import LoopState, plan

BASE = dict(num_samples=4, seq_len=32, protect_first=1, dtype="float32", batch_size=4, max_sparsity=0.3)


class Interrupt(Exception):
    pass


def _interrupted(config: PruneConfig) -> str:
    """Run ``config`` (recomputing) until step 1 is checkpointed, then stop as a killed run would; its key."""

    def stop_after_1(event):
        if event.phase == "step" and event.done == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        prune(config, progress=stop_after_1, use_cache=False)
    key = plan(config).key
    assert LoopState.load(cache.partial_path(key), key).done == 1
    return key


def _job(key: str, state: str, started: float, pid: int | None = None) -> None:
    folder = jobs.job_dir(key)
    folder.mkdir(parents=True)
    atomic_write_json(
        folder / "status.json", {"key": key, "state": state, "updated_unix": started, "started_unix": started}
    )
    if pid is not None:
        (folder / "pid").write_text(str(pid))


def _staging(root, name: str, age_s: float = 0.0):
    folder = root / f"{TMP_MARK}{name}.x1y2"
    folder.mkdir(parents=True)
    (folder / "part.bin").write_bytes(b"\0" * 64)
    if age_s:
        then = time.time() - age_s
        os.utime(folder, (then, then))
    return folder


def test_prune_jobs_older_than_0_deletes_finished_work_and_keeps_live_work(tiny_llama, data_dir, capsys):
    finished = prune(PruneConfig(model=str(tiny_llama), steps=2, **BASE)).trajectory
    live_key = _interrupted(PruneConfig(model=str(tiny_llama), steps=3, seed=7, **BASE))
    # the run computing live_key: a live process that looks like a job, started long ago
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "gisp_engine.jobs"])
    try:
        long_ago = time.time() - 100 * 86400
        _job(live_key, "running", long_ago, proc.pid)
        _job("old-done", "done", long_ago)
        _job("new-failed", "failed", time.time())
        _job("died", "running", long_ago, 999999)  # no such process: it is failed, and goes
        writing = [_staging(cache.trajectories_dir(), live_key), _staging(jobs.jobs_dir(), "status.json")]
        stale = _staging(cache.trajectories_dir(), "gone", age_s=3 * 86400)
        assert jobs.status(live_key).active

        assert main(["cache", "prune", "--jobs", "--older-than", "0", "--json"]) == 0
        removed = {os.path.basename(r["path"]) for r in json.loads(capsys.readouterr().out)["items"]}

        assert jobs.job_dir(live_key).is_dir() and jobs.status(live_key).active, "a live job is never pruned"
        assert LoopState.load(cache.partial_path(live_key), live_key).done == 1, "its checkpoint is intact"
        assert all(f.is_dir() and (f / "part.bin").stat().st_size == 64 for f in writing), "writes in progress stay"
        for gone in ("old-done", "new-failed", "died"):
            assert not jobs.job_dir(gone).exists(), gone
        assert not stale.exists()
        assert not cache.path_for(finished.key).exists() and cache.lookup(finished.key) is None
        assert removed == {"old-done", "new-failed", "died", stale.name, finished.key}
    finally:
        proc.kill()
        proc.wait()


def test_cache_rm_removes_the_trajectory_with_its_checkpoint(tiny_llama, data_dir, capsys):
    config = PruneConfig(model=str(tiny_llama), steps=2, **BASE)
    key = prune(config).trajectory.key
    assert _interrupted(config) == key  # a recomputation of the same request, interrupted: both on disk
    assert cache.path_for(key).is_dir() and cache.partial_path(key).is_dir()
    assert main(["cache", "rm", key]) == 0
    assert not cache.path_for(key).exists() and not cache.partial_path(key).exists()
    capsys.readouterr()

    # a request that only ever got as far as a checkpoint is removed too
    only_partial = _interrupted(PruneConfig(model=str(tiny_llama), steps=2, seed=3, **BASE))
    assert main(["cache", "rm", only_partial]) == 0
    assert not cache.partial_path(only_partial).exists()
    assert main(["cache", "rm", only_partial]) == 2
    assert "no trajectory" in capsys.readouterr().err


def test_gisp_lock_timeout_s_bounds_the_wait_for_another_run(tiny_llama, data_dir, monkeypatch):
    config = PruneConfig(model=str(tiny_llama), steps=2, **BASE)
    key = plan(config).key
    held, release = threading.Event(), threading.Event()

    def other_run():  # another process's run of the same request, holding its lock
        with cache.locked(key):
            held.set()
            release.wait(20)

    thread = threading.Thread(target=other_run)
    thread.start()
    try:
        assert held.wait(30)
        monkeypatch.setenv("GISP_LOCK_TIMEOUT_S", "1.5")
        start = time.monotonic()
        with pytest.raises(GispError, match=f"waiting for trajectory {key}"):
            prune(config)
        assert 1.4 <= time.monotonic() - start < 30, "it waits about as long as it is told, then gives up"
        monkeypatch.setenv("GISP_LOCK_TIMEOUT_S", "soon")
        with pytest.raises(GispError, match="GISP_LOCK_TIMEOUT_S must be a number of seconds, got 'soon'"):
            prune(config)
    finally:
        release.set()
        thread.join()
    monkeypatch.setenv("GISP_LOCK_TIMEOUT_S", "1.5")  # the lock free again: the same setting computes it
    assert prune(config).trajectory.key == key
