"""Several processes on one cache: one computes a request, others wait and reuse; nothing corrupts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from gisp_engine import Trajectory
from gisp_engine.cache import list_cached


def _prune(model, seed: int) -> subprocess.Popen:
    args = [sys.executable, "-m", "gisp_engine", "prune", "--model", str(model), "--num-samples", "8",
            "--seq-len", "32", "--steps", "4", "--max-sparsity", "0.4", "--protect-first", "1",
            "--seed", str(seed), "--quiet", "--json"]
    return subprocess.Popen(args, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_same_request_compute_once(tiny_llama, data_dir):
    procs = [_prune(tiny_llama, 0) for _ in range(2)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr
        outs.append(json.loads(stdout))
    assert sorted(o["cache_hit"] for o in outs) == [False, True], "exactly one computes, the other reuses"
    assert outs[0]["path"] == outs[1]["path"]
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
