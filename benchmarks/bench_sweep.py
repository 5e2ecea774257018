"""Sweeping a whole trajectory: wall time of a perplexity sweep, and the cost of every step against dense.

1. Perplexity sweep of the example trajectory (``cache/examples/smollm2-135m-ppl-iterative``, 11 points:
   dense and 10 steps), WikiText-2 over 120 non-overlapping windows of 128 tokens, in an empty cache, so
   every point is computed: wall time from the command's start (model load included). Target on 2 CPU
   cores: <= 5 minutes.
2. Cost sweep of the same trajectory: prefill tokens/s (batch 4 x 128), decode tokens/s (batch 1, 16 new
   tokens after 16), peak memory and weight bytes of each physically sliced step, each as a ratio to the
   dense model measured in the same process (medians of 3 repeats).

    python benchmarks/bench_sweep.py                 # both
    python benchmarks/bench_sweep.py --threads 1     # a CPU shared with other work
    python benchmarks/bench_sweep.py --part cost
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, table, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "cache" / "examples" / "smollm2-135m-ppl-iterative"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trajectory", default=str(EXAMPLE))
    ap.add_argument("--windows", type=int, default=120)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--part", choices=["all", "perplexity", "cost"], default="all")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    # every point computed: an empty cache of our own (the model itself comes from the project cache)
    scratch = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    (scratch / "models").mkdir()
    for name in ("smollm2-135m",):
        real = ROOT / "cache" / "models" / name
        if real.is_dir():
            (scratch / "models" / name).symlink_to(real, target_is_directory=True)
    os.environ["GISP_CACHE_DIR"] = str(scratch)

    import torch

    from gisp_engine.choose.sweep import SweepRequest, run_sweep
    from gisp_engine.choose.table import sweep_table
    from gisp_engine.core.progress import TqdmProgress
    from gisp_engine.evaluation.cost import CostSpec
    from gisp_engine.model.loading import load_model
    from gisp_engine.pruning.subnetwork import recorded_model
    from gisp_engine.pruning.trajectory import Trajectory

    if args.threads:
        torch.set_num_threads(args.threads)
    # the trajectory without the results it may ship (evaluations.json): every point is computed
    copy = scratch / "trajectory"
    copy.mkdir()
    for name in ("trajectory.json", "structures.safetensors"):
        shutil.copy(Path(args.trajectory) / name, copy / name)
    traj = Trajectory.load(copy)
    model = recorded_model(Trajectory.load(args.trajectory))
    result = {"machine": machine(), "threads": torch.get_num_threads(), "trajectory": args.trajectory}

    if args.part in ("all", "perplexity"):
        start = time.perf_counter()
        bar = TqdmProgress()
        report = run_sweep(
            traj,
            lambda: load_model(model, args.device, args.dtype),
            SweepRequest(tasks=("wikitext2",), limit=args.windows, seq_len=args.seq_len),
            bar,
            copy_model=False,
        )
        bar.close()
        wall = time.perf_counter() - start
        ppl = sweep_table(traj).quality["wikitext2"]
        result["perplexity_sweep"] = {
            "points": report.computed,
            "windows": args.windows,
            "seq_len": args.seq_len,
            "wall_s": wall,
            "target_s": 300,
            "perplexity": ppl.tolist(),
        }
        print(
            f"\nperplexity sweep: {report.computed} points x {args.windows} windows of {args.seq_len} tokens "
            f"in {wall:.1f} s (target <= 300 s) on {torch.get_num_threads()} threads"
        )

    if args.part in ("all", "cost"):
        spec = CostSpec()
        start = time.perf_counter()
        bar = TqdmProgress()
        run_sweep(
            traj,
            lambda: load_model(model, args.device, args.dtype),
            SweepRequest(tasks=(), cost=spec),
            bar,
            copy_model=False,
        )
        bar.close()
        t = sweep_table(traj)
        rows = [
            [
                int(s),
                float(t.param_sparsity[s]),
                float(t.cost["prefill_speedup"][s]),
                float(t.cost["decode_speedup"][s]),
                float(t.cost["memory_ratio"][s]),
                float(t.cost["peak_bytes"][s] / 2**20),
                float(t.cost["weight_bytes"][s] / 2**20),
            ]
            for s in t.steps
        ]
        print(
            "\n"
            + table(
                rows,
                [
                    "step",
                    "param sparsity",
                    "prefill x dense",
                    "decode x dense",
                    "memory x dense",
                    "peak MiB",
                    "weights MiB",
                ],
            )
        )
        result["cost_sweep"] = {
            "spec": spec.to_dict(),
            "wall_s": time.perf_counter() - start,
            "label": t.cost_label,
            "rows": [
                dict(
                    zip(
                        [
                            "step",
                            "param_sparsity",
                            "prefill_speedup",
                            "decode_speedup",
                            "memory_ratio",
                            "peak_mib",
                            "weight_mib",
                        ],
                        r,
                    )
                )
                for r in rows
            ],
            "dense": {k: float(v[0]) for k, v in t.cost.items()},
        }
    print(f"results: {write_result('bench_sweep', result)}")


if __name__ == "__main__":
    main()
