"""Data-parallel scoring (torch.distributed, gloo on CPU): 2 processes give the 1-process trajectory.

Spawning processes is the expensive part, so one spawn runs every tiny-model case (each family,
each objective, even and uneven micro-batch counts) and the tests compare its results with
1-process runs in the test process. Separate spawns: a rank that dies mid-step (then a resumed
2-process run), the real ``torchrun -m gisp_engine prune`` command, and the embedded model.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import cache_dir

from gisp_engine import PruneConfig
from gisp_engine.cli import main as cli_main
from gisp_engine.core.errors import GispError
from gisp_engine.pruning import cache, distributed
from gisp_engine.pruning.pruner import LoopState, plan, prune

WORLD = 2
SMALL = dict(num_samples=6, seq_len=24, steps=3, max_sparsity=0.3, save_scores=True, dtype="float32", device="cpu")


def _summary(outcome) -> dict:
    t = outcome.trajectory
    return {
        "key": t.key,
        "removal": t.removal_step.copy(),
        "scores": None if t.scores is None else t.scores.copy(),
        "loss": [s.loss for s in t.steps],
        "hit": outcome.cache_hit,
        "processes": t.meta.get("processes"),
    }


def _worker(rank: int, init_file: str, jobs: list, out: str, env: dict, die_at_loss_call: int | None) -> None:
    """One rank: join the group, run ``jobs`` [(name, config kwargs, resume)], pickle what came out."""
    os.environ.update(env[rank])
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=120)
    )
    if die_at_loss_call is not None and rank == 1:
        from gisp_engine.pruning.objectives.perplexity import PerplexityObjective

        calls, original = [0], PerplexityObjective.loss

        def dying_loss(self, model, batch):
            calls[0] += 1
            if calls[0] == die_at_loss_call:
                os._exit(3)  # a crash in the middle of a scoring step
            return original(self, model, batch)

        PerplexityObjective.loss = dying_loss
    results: dict = {}
    try:
        for name, kwargs, resume in jobs:
            results[name] = _summary(prune(PruneConfig(**kwargs), resume=resume))
    except Exception as exc:  # noqa: BLE001 - reported to the test process
        results["error"] = repr(exc)
    with open(Path(out) / f"rank{rank}.pkl", "wb") as fh:
        pickle.dump(results, fh)
    try:
        torch.distributed.destroy_process_group()
    except Exception:  # noqa: BLE001 - the peer may be gone
        pass


def run_ranks(
    tmp: Path,
    jobs: list,
    die_at_loss_call: int | None = None,
    timeout: float = 300,
    rank_env: dict[int, dict] | None = None,
) -> tuple[list, list]:
    """Run ``jobs`` on 2 spawned ranks (``rank_env``: extra variables per rank); each rank's results, exit codes."""
    tmp.mkdir(parents=True, exist_ok=True)
    init_file = tmp / "rendezvous"
    init_file.unlink(missing_ok=True)
    env = {k: os.environ[k] for k in ("GISP_CACHE_DIR", "GISP_DATA_DIR", "GISP_OFFLINE") if k in os.environ}
    env["OMP_NUM_THREADS"] = "1"
    env = {r: {**env, **(rank_env or {}).get(r, {})} for r in range(WORLD)}
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(r, str(init_file), jobs, str(tmp), env, die_at_loss_call))
        for r in range(WORLD)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():  # never leave a hung rank behind
            p.kill()
            p.join()
    results = []
    for r in range(WORLD):
        path = tmp / f"rank{r}.pkl"
        results.append(pickle.loads(path.read_bytes()) if path.is_file() else None)
        path.unlink(missing_ok=True)
    return results, [p.exitcode for p in procs]


def assert_same_trajectory(one: dict, two: dict) -> None:
    assert two["key"] == one["key"]  # the number of processes is not part of the cache key
    np.testing.assert_array_equal(two["removal"], one["removal"])
    mask = np.isfinite(one["scores"])
    np.testing.assert_array_equal(np.isfinite(two["scores"]), mask)
    # scores are stored as float16 (11 significant bits): a trajectory read back from the cache holds them so
    np.testing.assert_allclose(two["scores"][mask], one["scores"][mask], rtol=2**-10, atol=0)
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)


def _cases(tiny_models) -> dict[str, dict]:
    cases = {}
    for family in ("llama", "mistral", "qwen2", "qwen3"):
        # 6 sequences in micro-batches of 2: 3 micro-batches, so rank 0 scores 2 and rank 1 one
        cases[f"{family}-gqa"] = dict(model=str(tiny_models[(family, True)]), batch_size=2, **SMALL)
    cases["llama-mha-kv-group"] = dict(model=str(tiny_models[("llama", False)]), batch_size=3, gqa="kv-group", **SMALL)
    # one micro-batch for two ranks: rank 1 has nothing to score and adds zeros
    cases["one-batch"] = dict(model=str(tiny_models[("qwen2", True)]), batch_size=6, **SMALL)
    llama = str(tiny_models[("llama", True)])
    opts = {k: v for k, v in SMALL.items() if k not in ("num_samples", "seq_len")}
    cases["margin"] = dict(
        model=llama, objective="margin", tasks="arc_easy,piqa", calib_tokens=800, batch_size=3, **opts
    )
    cases["gsm8k"] = dict(model=llama, objective="gsm8k", calib_tokens=600, batch_size=1, **opts)
    cases["gisp-oneshot"] = dict(model=llama, method="gisp-oneshot", batch_size=2, **SMALL)
    # bfloat16: each rank sums its micro-batches in float32, and the all-reduce is in float32
    cases["bf16"] = dict(model=llama, batch_size=2, **{**SMALL, "dtype": "bfloat16"})
    return cases


@pytest.fixture(scope="module")
def two_process_runs(tiny_models, data_dir, tmp_path_factory):
    """Every tiny-model case, run once by 2 ranks (one spawn); returns cases, both ranks' results, cache dir."""
    tmp = tmp_path_factory.mktemp("dist")
    cache_root, rank1_cache = tmp / "cache", tmp / "rank1-cache"
    with cache_dir(cache_root):
        cases = _cases(tiny_models)
        # rank 1 gets a cache of its own (as on another machine): it must never be written
        results, codes = run_ranks(
            tmp, [(name, kw, False) for name, kw in cases.items()], rank_env={1: {"GISP_CACHE_DIR": str(rank1_cache)}}
        )
    assert codes == [0, 0] and all(r is not None and "error" not in r for r in results), results
    return cases, results, cache_root, rank1_cache


@pytest.mark.parametrize(
    "case",
    [
        "llama-gqa",
        "mistral-gqa",
        "qwen2-gqa",
        "qwen3-gqa",
        "llama-mha-kv-group",
        "one-batch",
        "margin",
        "gsm8k",
        "gisp-oneshot",
        "bf16",
    ],
)
def test_two_processes_give_the_one_process_trajectory(two_process_runs, case):
    cases, (rank0, rank1), _, _ = two_process_runs
    one = _summary(prune(PruneConfig(**cases[case]), use_cache=False))
    assert_same_trajectory(one, rank0[case])
    # every rank removed the same structures and holds bitwise the same scores
    np.testing.assert_array_equal(rank1[case]["removal"], rank0[case]["removal"])
    np.testing.assert_array_equal(rank1[case]["scores"], rank0[case]["scores"])
    assert rank0[case]["processes"] == 2 and one["processes"] == 1


def test_only_rank_zero_writes_the_cache(two_process_runs, monkeypatch):
    cases, (rank0, _), cache_root, rank1_cache = two_process_runs
    assert not (rank1_cache / "trajectories").exists()  # no entry, checkpoint or lock file on rank 1's side
    monkeypatch.setenv("GISP_CACHE_DIR", str(cache_root))
    entries = sorted(p.name for p in cache.trajectories_dir().iterdir() if not p.name.startswith("."))
    assert entries == sorted({r["key"] for name, r in rank0.items()})  # one complete entry per case, nothing else
    # and a 1-process run now finds rank 0's entry under the same key
    outcome = prune(PruneConfig(**cases["llama-gqa"]))
    assert outcome.cache_hit and outcome.trajectory.key == rank0["llama-gqa"]["key"]


def test_a_rank_that_dies_leaves_no_entry_and_a_resumed_run_continues(tiny_llama, data_dir, tmp_path, isolated_cache):
    config = dict(model=str(tiny_llama), batch_size=2, **{**SMALL, "steps": 4})
    key = plan(PruneConfig(**config)).key
    # 6 sequences / 2 per batch = 3 micro-batches, rank 1 scores 1 per step: its 3rd loss call is inside step 3
    results, codes = run_ranks(tmp_path / "die", [("run", config, False)], die_at_loss_call=3, timeout=180)
    assert codes[1] == 3
    assert codes[0] == 0 and "error" in results[0]  # rank 0 noticed the broken group instead of hanging
    assert cache.lookup(key) is None and cache.list_cached() == []
    assert not [p for p in cache.trajectories_dir().iterdir() if p.name.startswith(".tmp-")]
    state = LoopState.load(cache.partial_path(key), key)
    assert state is not None and state.done == 2

    results, codes = run_ranks(tmp_path / "resume", [("run", config, True)])
    assert codes == [0, 0] and "error" not in results[0], results
    uninterrupted = _summary(prune(PruneConfig(**config), use_cache=False))
    assert_same_trajectory(uninterrupted, results[0]["run"])
    assert cache.lookup(key) is not None and not cache.partial_path(key).exists()


def test_torchrun_command_line(tiny_llama, data_dir, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    args = [
        "prune",
        "--model",
        str(tiny_llama),
        "--num-samples",
        "6",
        "--seq-len",
        "24",
        "--batch-size",
        "2",
        "--steps",
        "2",
        "--max-sparsity",
        "0.2",
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--quiet",
        "--json",
        "--distributed",
        "--out",
        str(tmp_path / "out"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", str(WORLD), "-m", "gisp_engine", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count('"key"') == 1  # rank 0 alone reports
    config = PruneConfig(
        model=str(tiny_llama),
        num_samples=6,
        seq_len=24,
        batch_size=2,
        steps=2,
        max_sparsity=0.2,
        dtype="float32",
        device="cpu",
    )
    key = plan(config).key
    assert f'"key": "{key}"' in run.stdout
    two = cache.lookup(key)
    assert two is not None and two.meta["processes"] == WORLD
    one = prune(config, use_cache=False).trajectory
    np.testing.assert_array_equal(two.removal_step, one.removal_step)
    np.testing.assert_allclose(two.score, one.score, rtol=1e-5)


def test_distributed_flag_needs_a_launcher(tiny_llama, capsys, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    code = cli_main(["prune", "--model", str(tiny_llama), "--distributed", "--quiet"])
    assert code == 2 and "torchrun --nproc_per_node" in capsys.readouterr().err


def test_device_map_auto_is_refused_with_several_processes():
    with pytest.raises(GispError, match="--device-map auto cannot be combined"):
        distributed.check_device_map("auto", distributed.DistContext(rank=0, world_size=2))
    distributed.check_device_map("auto", distributed.DistContext())  # one process: fine
    distributed.check_device_map(None, distributed.DistContext(rank=1, world_size=2))


def test_shard_covers_every_micro_batch_once():
    items = list(range(7))
    shards = [distributed.shard(items, distributed.DistContext(r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == items and [len(s) for s in shards] == [3, 2, 2]
    assert distributed.shard(items[:1], distributed.DistContext(1, 2)) == []


@pytest.mark.real_model
def test_embedded_model_two_processes(embedded_model_dir, data_dir, tmp_path, isolated_cache):
    config = dict(
        model="smollm2-135m",
        num_samples=2,
        seq_len=48,
        batch_size=1,
        steps=2,
        max_sparsity=0.1,
        save_scores=True,
        dtype="float32",
        device="cpu",
    )
    results, codes = run_ranks(tmp_path / "real", [("real", config, False)], timeout=600)
    assert codes == [0, 0] and "error" not in results[0], results
    one = _summary(prune(PruneConfig(**config), use_cache=False))
    assert_same_trajectory(one, results[0]["real"])
