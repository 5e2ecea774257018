"""Prune once, deploy many: one elastic folder (every step) against per-step exports, on disk and when loading.

The embedded model and a trajectory of it (default: the repository's example trajectory, 10 steps to
53% parameter sparsity; ``--trajectory`` for another). Measured:

  disk     weight bytes of the elastic folder, of the dense model (its parameters in the export dtype),
           and of the per-step exports at the steps nearest 20, 30, 40 and 50% parameter sparsity (and their sum)
  load     at three of those steps, from the elastic folder (``gisp_step=T``) and from the step's own folder,
           each load in a fresh process: wall time of ``AutoModelForCausalLM.from_pretrained(DIR,
           trust_remote_code=True[, gisp_step=T])`` (what a user without this project runs; no SHA check), and
           the time to the end of a first forward (8 tokens), and peak memory: sampled resident set minus
           the resident set before the load (torch, transformers and the folder's code already imported),
           during the load and up to the end of the first forward (a mapped file's pages are read on first
           use, so stock loading's memory arrives at the first forward; the target uses the latter);
           median over ``--repeats`` fresh processes

Targets: elastic folder <= 1.05x the dense model's weights; peak memory loading step t from the elastic
folder <= 1.2x that step's exported size (the weight bytes of its per-step folder).

    python benchmarks/bench_elastic.py               # CPU, float32, 3 repeats
    python benchmarks/bench_elastic.py --quick       # one repeat, two sparsities
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PeakMemory, machine, median, rss_bytes, table, write_result  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "cache" / "examples" / "smollm2-135m-ppl-iterative"
DISK_SPARSITIES = "0.2,0.3,0.4,0.5"
LOAD_SPARSITIES = "0.3,0.4,0.5"


# ---- worker (a fresh process per load) -----------------------------------------------------------
def load_worker(spec: dict) -> dict:
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(1)
    kwargs = {} if spec["step"] is None else {"gisp_step": spec["step"]}
    # the code is imported before measuring: the figures are the weights' (both kinds import the same modules)
    config = AutoConfig.from_pretrained(spec["path"], trust_remote_code=True)
    get_class_from_dynamic_module(config.auto_map["AutoModelForCausalLM"], spec["path"])
    before = rss_bytes()
    start = time.perf_counter()
    with PeakMemory("cpu") as mem:
        model = AutoModelForCausalLM.from_pretrained(
            spec["path"], trust_remote_code=True, dtype=torch.float32, **kwargs
        )
    took = time.perf_counter() - start
    # a mapped file's pages are read on first use: one forward touches every weight
    with torch.no_grad(), PeakMemory("cpu") as forward:
        model(torch.zeros(1, 8, dtype=torch.long))
    first_forward = time.perf_counter() - start
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "load_s": took,
        "load_forward_s": first_forward,
        "load_peak_bytes": mem.peak - before,
        "peak_bytes": max(mem.peak, forward.peak) - before,
        "resident_bytes": rss_bytes() - before,
        "model_bytes": weights,
        "params": sum(p.numel() for p in model.parameters()),
    }


def run_worker(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--spec", json.dumps(spec)]
    # large blocks straight from mmap, so that freed tensors leave the resident set at once (as bench_deploy)
    env = dict(
        os.environ,
        TRANSFORMERS_VERBOSITY="error",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        MALLOC_MMAP_THRESHOLD_="65536",
        OMP_NUM_THREADS="1",
    )
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"load worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(spec: dict, repeats: int) -> dict:
    runs = [run_worker(spec) for _ in range(repeats)]
    figures = {
        k: median([r[k] for r in runs])
        for k in ("load_s", "load_forward_s", "load_peak_bytes", "peak_bytes", "resident_bytes")
    }
    return {**figures, "model_bytes": runs[0]["model_bytes"], "params": runs[0]["params"], "runs": runs}


# ---- the run ------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--trajectory", default=str(EXAMPLE), help="a trajectory folder or cache key of --model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one repeat; loads at two sparsities")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(load_worker(json.loads(args.spec))))
        return

    from gisp_engine import export_subnetwork, load_model
    from gisp_engine.export.elastic import export_elastic, folder_bytes
    from gisp_engine.pruning.cache import resolve_trajectory as _load_trajectory

    repeats = 1 if args.quick else args.repeats
    load_targets = [0.3, 0.5] if args.quick else [float(s) for s in LOAD_SPARSITIES.split(",")]
    traj = _load_trajectory(args.trajectory)
    mib = 2**20
    with tempfile.TemporaryDirectory(prefix="gisp-bench-elastic-") as tmp:
        root = Path(tmp)
        loaded = load_model(args.model, "cpu", "float32")
        dense_bytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
        start = time.perf_counter()
        elastic = export_elastic(loaded, traj, root / "elastic").folder
        elastic_export_s = time.perf_counter() - start
        del loaded
        elastic_bytes = folder_bytes(elastic)
        print(
            f"elastic export of {traj.num_steps + 1} steps: {elastic_bytes / mib:.1f} MiB in {elastic_export_s:.1f} s",
            file=sys.stderr,
        )

        points, seen = [], set()
        for target in sorted({*map(float, DISK_SPARSITIES.split(",")), *load_targets}):
            step = traj.step_nearest_sparsity(target)
            if step in seen:
                continue
            seen.add(step)
            loaded = load_model(args.model, "cpu", "float32")
            start = time.perf_counter()
            result = export_subnetwork(loaded, traj, step, root / f"step-{step}")
            took = time.perf_counter() - start
            del loaded
            points.append(
                {
                    "target": target,
                    "step": step,
                    "param_sparsity": result.param_sparsity,
                    "path": str(result.folder),
                    "export_bytes": folder_bytes(result.folder),
                    "export_s": took,
                }
            )
            print(
                f"per-step export of step {step} ({result.param_sparsity:.3f}): "
                f"{points[-1]['export_bytes'] / mib:.1f} MiB",
                file=sys.stderr,
            )

        disk_points = [p for p in points if p["target"] in set(map(float, DISK_SPARSITIES.split(",")))]
        per_step_sum = sum(p["export_bytes"] for p in disk_points)
        rows = []
        for p in points:
            if p["target"] not in load_targets:
                continue
            print(f"loading step {p['step']}: elastic and per-step, {repeats} fresh process(es) each", file=sys.stderr)
            from_elastic = measure({"path": str(elastic), "step": p["step"]}, repeats)
            from_folder = measure({"path": p["path"], "step": None}, repeats)
            if from_elastic["params"] != from_folder["params"]:
                raise SystemExit(
                    f"step {p['step']}: elastic loads {from_elastic['params']} parameters, "
                    f"the per-step folder {from_folder['params']}"
                )
            rows.append(
                {
                    **{k: p[k] for k in ("target", "step", "param_sparsity", "export_bytes")},
                    "elastic": from_elastic,
                    "per_step": from_folder,
                    "elastic_peak_x_export": from_elastic["peak_bytes"] / p["export_bytes"],
                    "per_step_peak_x_export": from_folder["peak_bytes"] / p["export_bytes"],
                }
            )

    elastic_x_dense = elastic_bytes / dense_bytes
    print(f"{args.model}, trajectory {traj.key or args.trajectory} ({traj.num_steps} steps), float32 on CPU")
    print(
        table(
            [
                ["elastic (every step)", f"{elastic_bytes / mib:.1f}", elastic_x_dense],
                ["dense model weights", f"{dense_bytes / mib:.1f}", 1.0],
            ]
            + [
                [
                    f"step {p['step']} ({p['param_sparsity']:.1%})",
                    f"{p['export_bytes'] / mib:.1f}",
                    p["export_bytes"] / dense_bytes,
                ]
                for p in disk_points
            ]
            + [
                [
                    f"sum of the {len(disk_points)} per-step exports",
                    f"{per_step_sum / mib:.1f}",
                    per_step_sum / dense_bytes,
                ]
            ],
            ["folder", "weights MiB", "x dense"],
        )
    )
    print(
        table(
            [
                [
                    r["step"],
                    r["param_sparsity"],
                    f"{r['export_bytes'] / mib:.1f}",
                    source,
                    r[key]["load_s"],
                    r[key]["load_forward_s"],
                    f"{r[key]['load_peak_bytes'] / mib:.1f}",
                    f"{r[key]['peak_bytes'] / mib:.1f}",
                    r[key]["peak_bytes"] / r["export_bytes"],
                ]
                for r in rows
                for source, key in (("elastic", "elastic"), ("per-step", "per_step"))
            ],
            [
                "step",
                "param sparsity",
                "export MiB",
                "from",
                "load s",
                "load+forward s",
                "peak MiB in load",
                "peak MiB to 1st forward",
                "x export",
            ],
        )
    )
    size_ok = elastic_x_dense <= 1.05
    worst = max((r["elastic_peak_x_export"] for r in rows), default=float("nan"))
    print(
        f"elastic folder {elastic_x_dense:.3f}x dense ({'meets' if size_ok else 'misses'} <= 1.05x); "
        f"elastic peak load memory up to {worst:.3f}x the step's export ({'meets' if worst <= 1.2 else 'misses'} "
        f"<= 1.2x); {len(disk_points)} per-step exports take {per_step_sum / elastic_bytes:.2f}x the elastic folder"
    )
    payload = {
        "args": vars(args),
        "machine": machine(),
        "trajectory": traj.key,
        "trajectory_steps": [{"step": s.step, "param_sparsity": s.param_sparsity} for s in traj.steps],
        "memory": "sampled RSS minus RSS before the load (code imported), fresh process per load: peak during "
        "from_pretrained (load_peak_bytes) and up to the end of the first forward (peak_bytes)",
        "elastic_bytes": elastic_bytes,
        "dense_bytes": dense_bytes,
        "elastic_x_dense": elastic_x_dense,
        "elastic_export_s": elastic_export_s,
        "per_step_sum_bytes": per_step_sum,
        "per_step_exports": [{k: v for k, v in p.items() if k != "path"} for p in points],
        "loads": rows,
    }
    path = write_result(f"bench_elastic{'_quick' if args.quick else ''}", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
