"""One GISP run on the embedded model, then WikiText-2 perplexity along its trajectory.

Prints the wall time of the run and the perplexity at the steps nearest the requested
parameter sparsities (how papers pick their 20/30/40/50% models), with the window length.

    python benchmarks/bench_trajectory.py                                   # 16 x 128, 10 steps to 0.5
    python benchmarks/bench_trajectory.py --max-sparsity 0.6 --limit 400    # reaches 50% parameter sparsity
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, table, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--num-samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--max-sparsity", type=float, default=0.5)
    ap.add_argument("--gqa", default="query")
    ap.add_argument("--at", default="0,0.2,0.3,0.4,0.5", help="parameter sparsities to evaluate")
    ap.add_argument("--eval-seq-len", type=int, default=128)
    ap.add_argument("--limit", type=int, default=200, help="WikiText-2 windows per evaluation (None: all)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--no-cache", action="store_true", help="time a fresh run even if it is cached")
    args = ap.parse_args()

    from gisp_engine import PruneConfig, apply_step, load_model, prune, wikitext2_perplexity

    config = PruneConfig(
        model=args.model,
        num_samples=args.num_samples,
        seq_len=args.seq_len,
        steps=args.steps,
        max_sparsity=args.max_sparsity,
        gqa=args.gqa,
        device=args.device,
        dtype=args.dtype,
    )
    start = time.perf_counter()
    outcome = prune(config, use_cache=not args.no_cache)
    wall = time.perf_counter() - start
    traj = outcome.trajectory
    rows, evals = [], []
    for target in (float(x) for x in args.at.split(",")):
        step = traj.step_nearest_sparsity(min(target, traj.max_param_sparsity))
        loaded = load_model(args.model, args.device, args.dtype)
        apply_step(loaded, traj, step)
        result = wikitext2_perplexity(loaded.model, loaded.tokenizer, seq_len=args.eval_seq_len, limit=args.limit)
        rec = traj.steps[step]
        evals.append(
            {
                "target": target,
                "step": step,
                "param_sparsity": rec.param_sparsity,
                "structural_ratio": rec.structural_ratio,
                "calib_loss": rec.loss,
                **result.to_dict(),
            }
        )
        rows.append([f"{target:.0%}", step, rec.param_sparsity, rec.structural_ratio, rec.loss, result.perplexity])
    print(
        f"GISP on {args.model}: {args.num_samples} x {args.seq_len} tokens, {args.steps} steps to structural "
        f"{args.max_sparsity}; run wall time {traj.meta['wall_time_s']:.1f} s in the loop "
        f"({'cache hit' if outcome.cache_hit else f'{wall:.1f} s with loading'})"
    )
    print(
        f"WikiText-2 perplexity, {args.eval_seq_len}-token non-overlapping windows, first {evals[0]['windows']} windows"
    )
    print(table(rows, ["target", "step", "param sparsity", "structural", "calib loss", "wikitext2 ppl"]))
    path = write_result(
        f"bench_trajectory_{args.max_sparsity}",
        {
            "args": vars(args),
            "machine": machine(),
            "trajectory": str(traj.path),
            "cache_hit": outcome.cache_hit,
            "loop_wall_time_s": traj.meta["wall_time_s"],
            "call_wall_time_s": wall,
            "evaluations": evals,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
