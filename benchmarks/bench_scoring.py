"""Cost of GISP scoring on the embedded model, against a plain forward+backward.

Three figures (targets from the engine issue):
  time   one scoring step / one plain forward+backward on the same batch      (<= 1.10)
  memory peak of a scoring step / peak of a plain fwd+bwd keeping all grads  (<= 0.85)
  shrink wall time of a 10-step run to 0.5 with slicing / with masking        (<= 0.75)
  bf16   extra peak memory of summing bf16 micro-batch gradients in float32 (issue 11), against
         summing them in bf16 inside .grad, beside its expected size (2 more bytes per scored weight)

The plain step is what a training loop does: the model's stock loss (``labels=``), every
weight asking for a gradient and keeping it. Each memory figure is measured in its own
subprocess, as the peak resident set on CPU (large blocks mapped and unmapped directly,
so the resident set follows live tensors) or the CUDA allocator's peak on GPU.

    python benchmarks/bench_scoring.py                 # CPU, float32
    python benchmarks/bench_scoring.py --device cuda --dtype bfloat16 --batch 8 --seq-len 256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PeakMemory, machine, median, table, timed, write_result  # noqa: E402


def _setup(args):
    import torch

    from gisp_engine import PruneConfig, load_model
    from gisp_engine.pruning.objectives import objective_spec

    torch.manual_seed(0)
    if args.child in ("sums-wide", "sums-narrow"):  # several bf16 micro-batches
        loaded = load_model(args.model, args.device, "bfloat16")
        config = PruneConfig(
            model=args.model,
            calib=args.calib,
            num_samples=args.batch,
            seq_len=args.sums_seq_len,
            batch_size=args.sums_micro_batch,
        )
        return loaded, objective_spec("perplexity").build(loaded, config)
    loaded = load_model(args.model, args.device, args.dtype)
    config = PruneConfig(
        model=args.model, calib=args.calib, num_samples=args.batch, seq_len=args.seq_len, batch_size=args.batch
    )
    objective = objective_spec("perplexity").build(loaded, config)
    return loaded, objective


def plain_step(loaded, objective):
    """What a user's training loop does: the stock loss, every weight asks for a gradient and keeps it."""
    for p in loaded.model.parameters():
        p.requires_grad_(True)
        p.grad = None
    for batch in objective.batches():
        ids = batch["input_ids"].to(loaded.device)
        loaded.model(input_ids=ids, labels=ids, use_cache=False).loss.backward()


def scoring_step(loaded, objective, wide_sums: bool | None = None):
    from gisp_engine.model.structures import StructureSpace
    from gisp_engine.model.surgery import full_layout
    from gisp_engine.pruning.importance import score_structures

    g = loaded.geometry
    space = StructureSpace(g, "query")
    scored = [i for i in range(g.num_layers) if i not in space.protected_layers(int(0.1 * g.num_layers), 1)]
    return score_structures(
        loaded.model, loaded.adapter, space, full_layout(space), objective, scored, wide_sums=wide_sums
    )


def scored_weight_count(loaded) -> int:
    from gisp_engine.model.structures import StructureSpace
    from gisp_engine.model.surgery import full_layout
    from gisp_engine.pruning.importance import scored_targets

    g = loaded.geometry
    space = StructureSpace(g, "query")
    scored = [i for i in range(g.num_layers) if i not in space.protected_layers(int(0.1 * g.num_layers), 1)]
    return sum(t.param.numel() for t in scored_targets(loaded.model, loaded.adapter, space, full_layout(space), scored))


def child(args) -> None:
    """Run one kind of step once (after a warm-up) and print its peak memory as JSON."""
    import torch

    loaded, objective = _setup(args)
    step = {
        "plain": plain_step,
        "scoring": scoring_step,
        "sums-wide": lambda lo, ob: scoring_step(lo, ob, wide_sums=True),
        "sums-narrow": lambda lo, ob: scoring_step(lo, ob, wide_sums=False),
    }[args.child]
    step(loaded, objective)  # warm-up: allocator pools and lazy init
    for p in loaded.model.parameters():
        p.grad = None
    with PeakMemory(args.device) as mem:
        step(loaded, objective)
        kept_grads = sum(
            p.grad.numel() * p.grad.element_size() for p in loaded.model.parameters() if p.grad is not None
        )
    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    print(
        json.dumps(
            {
                "peak": mem.peak,
                "baseline": mem.baseline,
                "weights": weights,
                "kept_grads": kept_grads,
                "threads": torch.get_num_threads(),
                "scored_weights": scored_weight_count(loaded),
                "micro_batches": len(objective.batches()),
            }
        )
    )


def memory(args, kind: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--model",
        args.model,
        "--calib",
        args.calib,
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--batch",
        str(args.batch),
        "--seq-len",
        str(args.seq_len),
        "--sums-seq-len",
        str(args.sums_seq_len),
        "--sums-micro-batch",
        str(args.sums_micro_batch),
    ]
    # large blocks straight from mmap, so that freed tensors leave the resident set at once
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def timing(args) -> dict:
    loaded, objective = _setup(args)
    plain_step(loaded, objective)  # warm-up
    scoring_step(loaded, objective)
    plain, scoring = [], []
    for _ in range(args.repeats):
        with timed(plain):
            plain_step(loaded, objective)
            _sync(args)
        for p in loaded.model.parameters():
            p.grad = None
        with timed(scoring):
            scoring_step(loaded, objective)
            _sync(args)
    return {"plain_s": plain, "scoring_s": scoring}


def _sync(args):
    import torch

    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def shrink_run(args) -> dict:
    from gisp_engine import PruneConfig, load_model
    from gisp_engine.pruning.objectives import objective_spec
    from gisp_engine.pruning.pruner import plan, run_gisp

    walls = {}
    for shrink in (False, True):
        config = PruneConfig(
            model=args.model,
            calib=args.calib,
            num_samples=args.run_samples,
            seq_len=args.run_seq_len,
            steps=10,
            max_sparsity=0.5,
            shrink=shrink,
            device=args.device,
            dtype=args.dtype,
        )
        the_plan = plan(config)
        loaded = load_model(args.model, args.device, args.dtype)
        objective = objective_spec("perplexity").build(loaded, config)
        start = time.perf_counter()
        traj = run_gisp(loaded, the_plan, objective)
        walls["shrink" if shrink else "mask"] = time.perf_counter() - start
        walls[("shrink" if shrink else "mask") + "_removal"] = traj.removal_step
    import numpy as np

    walls["same_trajectory"] = bool(np.array_equal(walls.pop("shrink_removal"), walls.pop("mask_removal")))
    return walls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument(
        "--calib", default="lambada", help="calibration text (gisp prune --calib): a file where no data dir is"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--run-samples", type=int, default=16, help="calibration sequences of the 10-step runs")
    ap.add_argument("--run-seq-len", type=int, default=128)
    ap.add_argument("--skip-runs", action="store_true", help="only the per-step figures")
    ap.add_argument("--sums-seq-len", type=int, default=128, help="bf16 sums figure: tokens per sequence")
    ap.add_argument("--sums-micro-batch", type=int, default=2, help="bf16 sums figure: sequences per micro-batch")
    ap.add_argument("--skip-sums", action="store_true", help="skip the bf16 gradient-sum memory figure")
    ap.add_argument("--child", choices=["plain", "scoring", "sums-wide", "sums-narrow"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    t = timing(args)
    mem_plain, mem_score = memory(args, "plain"), memory(args, "scoring")
    runs = None if args.skip_runs else shrink_run(args)
    sums = None if args.skip_sums else {"wide": memory(args, "sums-wide"), "narrow": memory(args, "sums-narrow")}
    time_ratio = median(t["scoring_s"]) / median(t["plain_s"])
    mem_ratio = mem_score["peak"] / mem_plain["peak"]
    mib = 2**20
    rows = [
        [
            "scoring step time / plain fwd+bwd",
            f"{median(t['scoring_s']):.2f} s / {median(t['plain_s']):.2f} s",
            time_ratio,
            "<= 1.10",
        ],
        [
            "scoring peak memory / plain fwd+bwd (keeps grads)",
            f"{mem_score['peak'] / mib:.0f} MiB / {mem_plain['peak'] / mib:.0f} MiB",
            mem_ratio,
            "<= 0.85",
        ],
    ]
    if runs:
        rows.append(
            [
                "10-step run to 0.5: shrink / mask",
                f"{runs['shrink']:.1f} s / {runs['mask']:.1f} s",
                runs["shrink"] / runs["mask"],
                "<= 0.75",
            ]
        )
    if sums:
        extra = sums["wide"]["peak"] - sums["narrow"]["peak"]
        expected = 2 * sums["wide"]["scored_weights"]  # float32 sum (4 B) instead of a bf16 .grad (2 B)
        rows.append(
            [
                f"bf16, {sums['wide']['micro_batches']} micro-batches of {args.sums_micro_batch} x "
                f"{args.sums_seq_len}: peak with float32 sums / bf16 sums",
                f"{sums['wide']['peak'] / mib:.0f} MiB / {sums['narrow']['peak'] / mib:.0f} MiB "
                f"(+{extra / mib:.0f} MiB; expected +{expected / mib:.0f} MiB)",
                sums["wide"]["peak"] / sums["narrow"]["peak"],
                "report",
            ]
        )
    print(f"GISP scoring on {args.model}, {args.device} {args.dtype}, batch {args.batch} x {args.seq_len} tokens")
    print(table(rows, ["figure", "measured", "ratio", "target"]))
    print(
        f"gradients kept after the step: plain {mem_plain['kept_grads'] / mib:.0f} MiB, "
        f"scoring {mem_score['kept_grads'] / mib:.0f} MiB"
    )
    if runs:
        print(f"shrunk and masked runs give the same trajectory: {runs['same_trajectory']}")
    payload = {
        "args": vars(args),
        "machine": machine(),
        "timing": t,
        "time_ratio": time_ratio,
        "memory_plain": mem_plain,
        "memory_scoring": mem_score,
        "memory_ratio": mem_ratio,
        "runs": runs,
        "bf16_sums": sums,
    }
    if runs:
        payload["shrink_ratio"] = runs["shrink"] / runs["mask"]
    path = write_result(f"bench_scoring_{args.device}", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
