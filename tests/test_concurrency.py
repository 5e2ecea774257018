"""Several processes on one cache: one computes a request, others wait and reuse; nothing corrupts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from gisp_engine import Trajectory
from gisp_engine.pruning.cache import list_cached

PRUNE = [
    "prune",
    "--num-samples",
    "8",
    "--seq-len",
    "32",
    "--steps",
    "4",
    "--max-sparsity",
    "0.4",
    "--protect-first",
    "1",
    "--quiet",
    "--json",
]

# `gisp` with two hooks that write events (time.monotonic: one clock for all processes on a machine):
# waiting for the request's lock / holding it, and the run itself, which is held until a release file exists
HELD = r"""
import contextlib, json, os, sys, time
from pathlib import Path
name, events, argv = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
from gisp_engine.pruning import cache, pruner
from gisp_engine.cli import main

def event(what):  # written whole, then renamed: a reader never sees half of it
    tmp = events / f".{name}.{what}"
    tmp.write_text(json.dumps(time.monotonic()))
    os.replace(tmp, events / f"{name}.{what}")

locked, run = cache.locked, pruner.run_gisp

@contextlib.contextmanager
def watched_lock(key):
    event("lock-wait")
    with locked(key):
        event("lock-held")
        yield

def held_run(*args, **kwargs):
    event("run-start")
    while not (events / "release").exists():
        time.sleep(0.05)
    try:
        return run(*args, **kwargs)
    finally:
        event("run-end")

cache.locked, pruner.run_gisp = watched_lock, held_run
sys.exit(main(argv))
"""


def _prune(model, seed: int) -> subprocess.Popen:
    args = [sys.executable, "-m", "gisp_engine", *PRUNE, "--model", str(model), "--seed", str(seed)]
    return subprocess.Popen(args, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _held(name: str, events: Path, model) -> subprocess.Popen:
    args = [sys.executable, "-c", HELD, name, str(events), *PRUNE, "--model", str(model), "--seed", "0"]
    return subprocess.Popen(args, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _await(path: Path, procs: list[subprocess.Popen], limit_s: float = 300.0) -> float:
    """The time an event file records, once it exists (fails early if a process died instead)."""
    deadline = time.monotonic() + limit_s
    while not path.exists():
        for p in procs:
            if p.poll() is not None and p.returncode != 0:
                raise AssertionError(f"a process failed: {p.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, f"{path.name} never happened"
        time.sleep(0.05)
    return json.loads(path.read_text())


def test_second_process_waits_on_the_lock_while_the_first_computes(tiny_llama, data_dir, tmp_path):
    """The first process is held inside its run; the second asks meanwhile, waits on the lock, and reuses."""
    events = tmp_path / "events"
    events.mkdir()
    first = _held("first", events, tiny_llama)
    procs = [first]
    try:
        _await(events / "first.run-start", procs)  # the first is computing, holding the lock
        second = _held("second", events, tiny_llama)
        procs.append(second)
        _await(events / "second.lock-wait", procs)  # the second has missed the cache and asks for the lock
        (events / "release").write_text("")
        outs = {}
        for name, p in (("first", first), ("second", second)):
            stdout, stderr = p.communicate(timeout=600)
            assert p.returncode == 0, stderr
            outs[name] = json.loads(stdout)
    finally:
        (events / "release").write_text("")
        for p in procs:
            if p.poll() is None:
                p.kill()
    t = {f.name: json.loads(f.read_text()) for f in events.iterdir() if f.name != "release"}
    assert set(t) == {
        "first.lock-wait",
        "first.lock-held",
        "first.run-start",
        "first.run-end",
        "second.lock-wait",
        "second.lock-held",
    }  # only the first computed
    # the spans overlapped: the second was waiting for the lock while the first computed ...
    assert t["first.run-start"] < t["second.lock-wait"] < t["first.run-end"]
    # ... and got it only after the first had finished; it never computed, it reused
    assert t["second.lock-held"] > t["first.run-end"]
    assert outs["first"]["cache_hit"] is False and outs["second"]["cache_hit"] is True
    assert outs["first"]["path"] == outs["second"]["path"]
    assert len(list_cached()) == 1


def test_different_requests_at_once_do_not_corrupt_the_cache(tiny_llama, data_dir):
    procs = [_prune(tiny_llama, seed) for seed in (1, 2, 3)]
    paths = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr
        paths.append(json.loads(stdout)["path"])
    assert len(set(paths)) == 3
    listed = list_cached()
    assert sorted(r["path"] for r in listed) == sorted(paths)
    for path in paths:
        assert Trajectory.load(path).num_steps == 4
