"""Data-parallel scoring: one GISP scoring step with 1 process against N processes (torch.distributed).

The step scores the embedded model on 8 x 256 tokens in micro-batches of 4 (so 2 processes get
one micro-batch each); every process runs one thread on CPU (gloo) or one GPU (NCCL). Figures:
  speedup     median step time with 1 process / with N processes          (goal >= 1.7 with 2)
  all-reduce  time inside the step's all-reduces / the step (N processes); it includes waiting
              for the slower rank, so a bare all-reduce of the same bytes is timed too
  CPU-time speedup  the same ratio of CPU time (slowest rank): the wall-time speedup that free
              cores would give; on a machine shared with other work the wall-time one is lower
Each configuration runs in fresh processes, alternating, ``--rounds`` times: the spread across
rounds (and the load average printed) shows how noisy the machine was.

    python benchmarks/bench_distributed.py                         # CPU, 1 vs 2 processes
    python benchmarks/bench_distributed.py --device cuda --procs 8 # 1 GPU vs 8 GPUs
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, median, table, write_result  # noqa: E402


def _worker(rank: int, world: int, init_file: str, args: argparse.Namespace, out: str) -> None:
    import torch

    torch.set_num_threads(1)
    device = args.device
    if world > 1:
        from gisp_engine.pruning.distributed import backend_for

        backend = backend_for(device)
        if device.startswith("cuda"):
            torch.cuda.set_device(rank)
        torch.distributed.init_process_group(
            backend,
            init_method=f"file://{init_file}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=1800),
        )
    from gisp_engine import PruneConfig, load_model
    from gisp_engine.model.structures import StructureSpace
    from gisp_engine.model.surgery import full_layout
    from gisp_engine.pruning import distributed
    from gisp_engine.pruning.importance import score_structures
    from gisp_engine.pruning.objectives import objective_spec

    loaded = load_model(args.model, "cuda" if device.startswith("cuda") else device, args.dtype)
    config = PruneConfig(model=args.model, num_samples=args.samples, seq_len=args.seq_len, batch_size=args.batch_size)
    objective = objective_spec("perplexity").build(loaded, config)
    g = loaded.geometry
    space = StructureSpace(g, "query")
    scored = [i for i in range(g.num_layers) if i not in space.protected_layers(int(0.1 * g.num_layers), 1)]

    reduce_s = [0.0]
    reduced_bytes = [0]
    plain_reduce = distributed.all_reduce_sum_

    def timed_reduce(tensor):
        start = time.perf_counter()
        plain_reduce(tensor)
        if tensor.is_cuda:
            torch.cuda.synchronize()
        reduce_s[0] += time.perf_counter() - start
        reduced_bytes[0] += tensor.numel() * tensor.element_size()
        return tensor

    distributed.all_reduce_sum_ = timed_reduce

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        distributed.barrier()

    steps, reduces, cpu = [], [], []
    for i in range(args.repeats + 1):  # the first is a warm-up
        reduce_s[0], reduced_bytes[0] = 0.0, 0
        sync()
        start, start_cpu = time.perf_counter(), time.process_time()
        score_structures(loaded.model, loaded.adapter, space, full_layout(space), objective, scored)
        sync()
        if i:
            steps.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            reduces.append(reduce_s[0])
    bare = []
    if world > 1:  # the same bytes all-reduced with nothing else running: the communication alone
        buf = torch.ones(reduced_bytes[0] // 4, dtype=torch.float32, device=loaded.device)
        for _ in range(2):
            sync()
            start = time.perf_counter()
            plain_reduce(buf)
            sync()
            bare.append(time.perf_counter() - start)
        del buf
    with open(Path(out) / f"rank{rank}.pkl", "wb") as fh:
        pickle.dump(
            {
                "step_s": steps,
                "cpu_s": cpu,
                "allreduce_s": reduces,
                "bare_allreduce_s": bare,
                "bytes": reduced_bytes[0],
                "micro_batches": len(distributed.shard(objective.batches())),
            },
            fh,
        )
    if world > 1:
        torch.distributed.destroy_process_group()


def run(world: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        ctx = multiprocessing.get_context("spawn")
        env_threads = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = "1"
        try:
            procs = [
                ctx.Process(target=_worker, args=(r, world, str(Path(tmp) / "rdzv"), args, tmp)) for r in range(world)
            ]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
        finally:
            if env_threads is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = env_threads
        if any(p.exitcode for p in procs):
            raise SystemExit(f"a benchmark process failed (exit codes {[p.exitcode for p in procs]})")
        ranks = [pickle.loads((Path(tmp) / f"rank{r}.pkl").read_bytes()) for r in range(world)]
    # a step ends when the slowest rank ends (the barrier makes them equal anyway)
    return {
        "step_s": [max(r["step_s"][i] for r in ranks) for i in range(args.repeats)],
        "cpu_s": [max(r["cpu_s"][i] for r in ranks) for i in range(args.repeats)],
        "load_average": os.getloadavg(),
        "allreduce_s": [max(r["allreduce_s"][i] for r in ranks) for i in range(args.repeats)],
        "bare_allreduce_s": ranks[0]["bare_allreduce_s"],
        "bytes": ranks[0]["bytes"],
        "micro_batches": [r["micro_batches"] for r in ranks],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--procs", type=int, default=2, help="processes of the parallel run")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4, help="sequences per micro-batch")
    ap.add_argument("--repeats", type=int, default=2, help="timed steps per process start (after a warm-up)")
    ap.add_argument("--rounds", type=int, default=2, help="fresh starts of each configuration, alternating")
    args = ap.parse_args()

    rounds = []
    for _ in range(args.rounds):
        one, many = run(1, args), run(args.procs, args)
        rounds.append(
            {
                "one": one,
                "many": many,
                "speedup": median(one["step_s"]) / median(many["step_s"]),
                "cpu_speedup": median(one["cpu_s"]) / median(many["cpu_s"]),
                "allreduce_share": median(many["allreduce_s"]) / median(many["step_s"]),
                "bare_allreduce_share": median(many["bare_allreduce_s"]) / median(many["step_s"]),
            }
        )
    speedups = [r["speedup"] for r in rounds]
    cpu_speedups = [r["cpu_speedup"] for r in rounds]
    rows = []
    for i, r in enumerate(rounds):
        rows.append(
            [
                f"round {i + 1}",
                f"{median(r['one']['step_s']):.2f} s",
                f"{median(r['many']['step_s']):.2f} s",
                r["speedup"],
                r["cpu_speedup"],
                f"{r['allreduce_share']:.1%}",
                f"{r['bare_allreduce_share']:.1%}",
                f"{r['many']['load_average'][0]:.1f}",
            ]
        )
    print(
        f"one scoring step of {args.model}, {args.device} {args.dtype}, {args.samples} x {args.seq_len} tokens in "
        f"micro-batches of {args.batch_size}, 1 thread per process; {args.procs} processes hold "
        f"{rounds[0]['many']['micro_batches']} micro-batches, all-reduce {rounds[0]['many']['bytes'] / 2**20:.0f} MiB"
    )
    print(
        table(
            rows,
            [
                "",
                "1 process",
                f"{args.procs} processes",
                "speedup",
                "CPU-time speedup",
                "all-reduce share (with waiting)",
                "bare all-reduce share",
                "load avg",
            ],
        )
    )
    print(
        f"speedup: median {median(speedups):.2f}, range {min(speedups):.2f} - {max(speedups):.2f} "
        "(goal >= 1.7 with 2); "
        f"CPU-time speedup: median {median(cpu_speedups):.2f}, range {min(cpu_speedups):.2f} - {max(cpu_speedups):.2f}"
    )
    path = write_result(
        f"bench_distributed_{args.device}",
        {
            "args": vars(args),
            "machine": machine(),
            "rounds": rounds,
            "speedup_median": median(speedups),
            "speedup_range": [min(speedups), max(speedups)],
            "cpu_speedup_median": median(cpu_speedups),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
