"""Does the calibration sampler matter? ``packed`` against ``window`` over several seeds.

For each seed and each sampler it builds one GISP trajectory of the embedded model (perplexity
objective on LAMBADA, 16 x 128 tokens, 10 steps to structural ratio 0.5 by default) and measures
WikiText-2 perplexity at the chosen steps over the same first 120 non-overlapping windows of 128
tokens. It prints each sampler's mean and standard deviation per step, and the difference
window - packed with its Welch t interval (95%).

Resumable: every finished run is stored in ``benchmarks/results/sampling-runs/`` and skipped next
time; an interrupted pruning run continues from its last step (``prune(..., resume=True)``).
Runs go seed by seed, both samplers per seed, so a partial result is balanced.

    python benchmarks/bench_sampling.py --quick     # minutes: proves the pipeline, numbers mean little
    python benchmarks/bench_sampling.py             # the measurement (about 10 pruning runs)
    python benchmarks/bench_sampling.py --report    # the table from the stored runs, running nothing
    python benchmarks/bench_sampling.py --samplers window   # one sampler (e.g. one process each, then --report)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, machine, table, write_result  # noqa: E402

SAMPLERS = ("packed", "window")


def run_settings(args) -> dict:
    """What determines one run's numbers (besides sampler and seed): part of its file name."""
    return {
        "model": args.model,
        "calib": args.calib,
        "num_samples": args.num_samples,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "max_sparsity": args.max_sparsity,
        "at": args.at,
        "ppl_windows": args.ppl_windows,
        "ppl_seq_len": 128,
        "dtype": args.dtype,
    }


def run_path(args, sampling: str, seed: int) -> Path:
    digest = hashlib.sha256(json.dumps(run_settings(args), sort_keys=True).encode()).hexdigest()[:10]
    return RESULTS / "sampling-runs" / f"{digest}-{sampling}-seed{seed}.json"


def one_run(args, sampling: str, seed: int) -> dict:
    from gisp_engine import PruneConfig, apply_step, load_model, prune
    from gisp_engine.evaluation.evaluate import evaluate_task

    config = PruneConfig(
        model=args.model,
        calib=args.calib,
        sampling=sampling,
        num_samples=args.num_samples,
        seq_len=args.seq_len,
        steps=args.steps,
        max_sparsity=args.max_sparsity,
        seed=seed,
        device=args.device,
        dtype=args.dtype,
    )
    t0 = time.perf_counter()
    outcome = prune(config, resume=True)
    traj = outcome.trajectory
    prune_s = time.perf_counter() - t0
    perplexity = {}
    for step in args.at:
        loaded = load_model(args.model, args.device, args.dtype)
        apply_step(loaded, traj, step)
        result = evaluate_task(
            loaded.model, loaded.tokenizer, "wikitext2", seq_len=128, limit=args.ppl_windows, batch_size=args.eval_batch
        )
        perplexity[str(step)] = result.perplexity
        print(
            f"  {sampling} seed {seed} step {step}: wikitext2 ppl {result.perplexity:.2f} ({result.windows} windows)",
            flush=True,
        )
    calibration = traj.meta["objective"]["calibration"]
    return {
        "sampling": sampling,
        "seed": seed,
        "key": traj.key,
        "cache_hit": outcome.cache_hit,
        "prune_wall_s": prune_s,
        "loop_wall_s": traj.meta.get("wall_time_s"),
        "calibration_mode": calibration.get("mode", "packed"),
        "calibration_note": calibration.get("note", ""),
        "param_sparsity": {str(s): traj.steps[s].param_sparsity for s in args.at},
        "perplexity": perplexity,
        "settings": run_settings(args),
        "machine": machine(),
    }


def welch(a: list[float], b: list[float]) -> dict:
    """mean(b) - mean(a) with its 95% Welch t interval (None where either side has fewer than 2 runs)."""
    diff = statistics.fmean(b) - statistics.fmean(a)
    if len(a) < 2 or len(b) < 2:
        return {"diff": diff, "low": None, "high": None, "df": None}
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else float(len(a) + len(b) - 2)
    from scipy.stats import t as student_t

    half = student_t.ppf(0.975, df) * se
    return {"diff": diff, "low": diff - half, "high": diff + half, "df": df}


def summarize(args, runs: list[dict]) -> dict:
    by = {s: [r for r in runs if r["sampling"] == s] for s in SAMPLERS}
    rows, summary = [], []
    for step in args.at:
        values = {s: [r["perplexity"][str(step)] for r in by[s]] for s in SAMPLERS}
        stats = {
            s: {
                "n": len(v),
                "mean": statistics.fmean(v) if v else None,
                "std": statistics.stdev(v) if len(v) > 1 else None,
            }
            for s, v in values.items()
        }
        cmp = welch(values["packed"], values["window"]) if all(values.values()) else None
        summary.append(
            {"step": step, **{s: {**stats[s], "values": values[s]} for s in SAMPLERS}, "window_minus_packed": cmp}
        )
        fmt = lambda x: "-" if x is None else f"{x:.1f}"  # noqa: E731
        cells = [step]
        for s in SAMPLERS:
            cells += [stats[s]["n"], fmt(stats[s]["mean"]), fmt(stats[s]["std"])]
        cells += [
            fmt(cmp and cmp["diff"]),
            "-" if not cmp or cmp["low"] is None else f"[{cmp['low']:.1f}, {cmp['high']:.1f}]",
        ]
        rows.append(cells)
    header = [
        "step",
        "n packed",
        "packed mean",
        "packed std",
        "n window",
        "window mean",
        "window std",
        "window - packed",
        "95% Welch t",
    ]
    print(
        f"\nGISP on {args.model}: {args.num_samples} x {args.seq_len} {args.calib} tokens, {args.steps} steps to "
        f"structural ratio {args.max_sparsity}; WikiText-2 perplexity over {args.ppl_windows} windows of 128 tokens"
    )
    print(table(rows, header))
    for s in SAMPLERS:
        notes = sorted({r["calibration_note"] for r in by[s] if r["calibration_note"]})
        if notes:
            print(f"{s}: {'; '.join(notes)}")
    return {"steps": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--calib", default="lambada")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument(
        "--samplers",
        default=",".join(SAMPLERS),
        help="run only these (one process per sampler shares the runs' folder; --report merges)",
    )
    ap.add_argument("--num-samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--max-sparsity", type=float, default=0.5, help="structural ratio at the last step")
    ap.add_argument("--at", default="4,6,8,10", help="steps at which WikiText-2 perplexity is measured")
    ap.add_argument("--ppl-windows", type=int, default=120, help="WikiText-2 windows of 128 tokens")
    ap.add_argument("--eval-batch", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--quick", action="store_true", help="2 seeds, 4 x 64 tokens, 2 steps, 8 windows")
    ap.add_argument("--report", action="store_true", help="only summarize the stored runs")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.num_samples, args.seq_len, args.steps, args.at, args.ppl_windows = "0,1", 4, 64, 2, "1,2", 8
    args.at = [int(x) for x in args.at.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]

    started = time.perf_counter()
    runs = []
    chosen = args.samplers.split(",")
    for seed in seeds:
        for sampling in SAMPLERS:
            path = run_path(args, sampling, seed)
            if path.is_file():
                runs.append(json.loads(path.read_text()))
                continue
            if args.report or sampling not in chosen:
                continue
            print(f"{sampling} seed {seed}: pruning", flush=True)
            run = one_run(args, sampling, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(run, indent=1, default=float) + "\n")
            tmp.replace(path)  # a run file is complete or absent
            runs.append(run)
            print(f"{sampling} seed {seed}: done ({run['prune_wall_s']:.0f} s pruning)", flush=True)
    if not runs:
        print("no finished runs yet")
        return
    summary = summarize(args, runs)
    settings = {**run_settings(args), "seeds": seeds}
    path = write_result(
        "sampling" + ("-quick" if args.quick else ""),
        {
            "settings": settings,
            "machine": machine(),
            "runs": runs,
            **summary,
            "wall_s": time.perf_counter() - started,
        },
    )
    print(f"\nwritten to {path} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
