"""Pruning steps of a real geometry at the paper's calibration size: time per step, extrapolated, and peak memory.

A random-init model of the geometry (``_geometries.py``; Llama-3.1-8B by default) prunes ``--steps``
steps of ``--num-samples`` x ``--seq-len`` tokens each (the paper: 2,000 x 256 for 7B/8B). The dry run
comes first: when its estimate does not fit the device, the micro-batch it names is used (said in the
output). The time per step is extrapolated to the paper's 112 steps two ways: the first (dense, largest)
step times 112, an upper bound, and the mean of the steps run. Calibration text is this repository's own
prose repeated (the weights are random: only the token count matters), so it runs without a data dir.

    python benchmarks/bench_paper_step.py --device cuda                       # 8B, bf16 (benchmarks/gpu_check.sh)
    python benchmarks/bench_paper_step.py --device cpu --geometry llama-3.2-1b --layers 2 --num-samples 8 --seq-len 64
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, table, write_result  # noqa: E402
from _geometries import GEOMETRIES, write_random_model  # noqa: E402
from bench_estimate import estimate, measure_case, prune_args  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def calibration_text(path: Path, tokens: int) -> Path:
    """This repository's prose, one paragraph a line, repeated until it holds about ``tokens`` tokens (4 chars each)."""
    paragraphs = []
    for doc in sorted(ROOT.glob("*.md")) + sorted((ROOT / "docs").glob("*.md")):
        paragraphs += [" ".join(p.split()) for p in doc.read_text(errors="ignore").split("\n\n") if len(p.split()) > 8]
    lines, size, i = [], 0, 0
    while size < 5 * tokens:  # a margin: tokenizers vary
        line = f"{i}. {paragraphs[i % len(paragraphs)]}"
        lines.append(line)
        size += len(line)
        i += 1
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--geometry", default="llama-3.1-8b", choices=sorted(GEOMETRIES))
    parser.add_argument("--layers", type=int, default=None, help="fewer layers than the geometry's own")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--paper-steps", type=int, default=112)
    parser.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "gisp-paper-step"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": machine(), "args": vars(args)}

    start = time.perf_counter()
    name = args.geometry + (f"-{args.layers}l" if args.layers else "")
    model = write_random_model(args.geometry, work / name, args.layers, device=args.device)
    result["write_model_s"] = time.perf_counter() - start
    calib = calibration_text(work / "calib.txt", args.num_samples * args.seq_len)
    steps_total = args.paper_steps
    # the paper's per-step ratio: 0.7 / 112 per step, so that 2 steps remove what the paper's first 2 remove
    extra = ("--calib", str(calib), "--max-sparsity", f"{0.7 * args.steps / steps_total:.6f}")

    batch = None
    plan = estimate(
        prune_args(str(model), args.dtype, args.num_samples, args.seq_len, batch, args.steps, args.device, extra)
    )
    result["dry_run"] = plan
    if not plan["fits"]:
        found = re.search(r"--batch-size (\d+)", plan.get("suggestion") or "")
        if not found:
            raise SystemExit(f"the dry run says nothing fits: {plan['suggestion']}")
        batch = int(found.group(1))
        print(
            f"the default micro-batch does not fit ({plan['memory']['peak_gib']} GiB): --batch-size {batch}", flush=True
        )
    case = measure_case(
        name,
        str(model),
        args.dtype,
        args.num_samples,
        args.seq_len,
        batch,
        args.steps,
        args.device,
        work / "trajectory",
        extra,
    )
    result["prune"] = case
    walls = case["step_walls_s"]  # cumulative at each step's record: step t's scoring ends at walls[t-1]
    first = walls[0]
    mean = walls[args.steps - 1] / args.steps
    gib = 1 << 30
    rows = [
        ["model", f"{name} ({plan['model']['params']:,} parameters, {args.dtype}, {args.device})", ""],
        [
            "calibration per step",
            f"{case['tokens_per_step']:,} tokens",
            f"{plan['sequences']} x {args.seq_len}, "
            f"{case['micro_batches']} micro-batches" + (f" of {batch}" if batch else ""),
        ],
        ["first step / mean of steps", f"{first:.1f} s / {mean:.1f} s", f"{args.steps} steps"],
        [
            f"{steps_total} steps extrapolated",
            f"{first * steps_total / 3600:.2f} h (first) / {mean * steps_total / 3600:.2f} h (mean)",
            "later steps are smaller: the first-step figure is an upper bound",
        ],
        [
            "peak memory measured / estimated",
            f"{case['measured_bytes'] / gib:.2f} / {case['estimate_bytes'] / gib:.2f} GiB",
            f"ratio {case['ratio']:.3f}",
        ],
    ]
    result["extrapolated_s"] = {"first_step": first * steps_total, "mean_step": mean * steps_total}
    print(table(rows, ["what", "figure", "note"]))
    write_result(f"bench_paper_step_{args.device.split(':')[0]}", result)
    print(json.dumps({"first_step_s": first, "mean_step_s": mean, "ratio": case["ratio"]}))


if __name__ == "__main__":
    main()
