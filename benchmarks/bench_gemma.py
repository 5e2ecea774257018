"""The second embedded family: a 10-step GISP run on Gemma 3 270M, then WikiText-2 perplexity along it.

Gemma 3 270M: 18 layers, 4 query heads over one KV head, head_dim 256, MLP 2048, a 262k
vocabulary (the chunked LM head and loss keep full logits out of memory). Prints the run's
wall time and peak resident memory, and the perplexity at the steps nearest the requested
parameter sparsities (window length and window count stated).

    python benchmarks/bench_gemma.py --threads 2                           # a fresh run: 16 x 128, 10 steps to 0.5
    python benchmarks/bench_gemma.py --threads 2 --trajectory cache/examples/gemma3-270m-ppl-iterative
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PeakMemory, machine, table, write_result  # noqa: E402

MODEL = "gemma3-270m"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=MODEL, help="another model folder (e.g. a tiny one, to try the script)")
    ap.add_argument("--num-samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--max-sparsity", type=float, default=0.5)
    ap.add_argument("--at", default="0,0.2,0.3,0.4", help="parameter sparsities to evaluate")
    ap.add_argument("--eval-seq-len", type=int, default=128)
    ap.add_argument("--limit", type=int, default=120, help="WikiText-2 windows per evaluation")
    ap.add_argument(
        "--bos",
        default="auto",
        choices=("auto", "each", "stream"),
        help="BOS policy of the calibration and WikiText-2 windows (auto: each, for Gemma 3)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--trajectory", type=Path, help="evaluate this trajectory instead of timing a fresh run")
    args = ap.parse_args()

    import os

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from gisp_engine import PruneConfig, Trajectory, apply_step, load_model, prune, wikitext2_perplexity
    from gisp_engine.core.settings import EMBEDDED_MODELS
    from gisp_engine.model.loading import prepare_embedded_model

    if args.model in EMBEDDED_MODELS:
        prepare_embedded_model(args.model)  # conversion (once per machine) is not part of the run's time
    run = {}
    if args.trajectory is None:
        config = PruneConfig(
            model=args.model,
            num_samples=args.num_samples,
            seq_len=args.seq_len,
            steps=args.steps,
            max_sparsity=args.max_sparsity,
            device="cpu",
            dtype="float32",
            bos=args.bos,
        )
        # a private cache, so that the run is really run; the converted model is shared through a link
        with tempfile.TemporaryDirectory() as tmp:
            shared = Path(os.environ.get("GISP_CACHE_DIR") or Path(__file__).resolve().parents[1] / "cache")
            (Path(tmp) / "models").mkdir()
            if args.model in EMBEDDED_MODELS:
                (Path(tmp) / "models" / args.model).symlink_to(shared / "models" / args.model, target_is_directory=True)
            os.environ["GISP_CACHE_DIR"] = tmp
            start = time.perf_counter()
            with PeakMemory("cpu") as memory:
                outcome = prune(config, use_cache=False)
            wall = time.perf_counter() - start
            traj = Trajectory.load(outcome.trajectory.path)
            os.environ["GISP_CACHE_DIR"] = str(shared)
        run = {"call_wall_time_s": wall, "loop_wall_time_s": traj.meta["wall_time_s"], "peak_rss_bytes": memory.peak}
    else:
        traj = Trajectory.load(args.trajectory)

    rows, evals = [], []
    for target in (float(x) for x in args.at.split(",")):
        step = traj.step_nearest_sparsity(min(target, traj.max_param_sparsity))
        loaded = load_model(args.model, "cpu", "float32")
        apply_step(loaded, traj, step)
        start = time.perf_counter()
        result = wikitext2_perplexity(
            loaded.model, loaded.tokenizer, seq_len=args.eval_seq_len, limit=args.limit, bos=args.bos
        )
        rec = traj.steps[step]
        evals.append(
            {
                "target": target,
                "step": step,
                "param_sparsity": rec.param_sparsity,
                "structural_ratio": rec.structural_ratio,
                "eval_wall_time_s": time.perf_counter() - start,
                **result.to_dict(),
            }
        )
        rows.append([f"{target:.0%}", step, rec.param_sparsity, rec.structural_ratio, result.perplexity])
        del loaded

    threads = torch.get_num_threads()
    if run:
        print(
            f"GISP on {args.model}: {args.num_samples} x {args.seq_len} tokens, {args.steps} steps to structural "
            f"{args.max_sparsity}, {threads} threads: {run['call_wall_time_s']:.1f} s with loading "
            f"({run['loop_wall_time_s']:.1f} s in the loop), peak RSS {run['peak_rss_bytes'] / 2**30:.2f} GiB"
        )
    else:
        print(f"trajectory {args.trajectory} ({traj.num_steps} steps), {threads} threads")
    calibrated = traj.meta["objective"].get("calibration", {}).get("bos", "stream")
    print(
        f"WikiText-2 perplexity, {args.eval_seq_len}-token non-overlapping windows, "
        f"first {evals[0]['windows']} windows, BOS {evals[0]['bos']} (calibration windows: BOS {calibrated})"
    )
    print(table(rows, ["target", "step", "param sparsity", "structural", "wikitext2 ppl"]))
    path = write_result(
        "bench_gemma",
        {
            "args": {k: str(v) for k, v in vars(args).items()},
            "machine": machine(),
            "threads": threads,
            "run": run,
            "evaluations": evals,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
