"""The dry run's peak-memory estimate against the peak measured in a real run.

Each case runs twice, each time in a fresh process, exactly as a user would:
  estimate  ``gisp prune --dry-run --json`` (no weights loaded; its ``runtime`` part is that process's
            resident set)
  measured  ``gisp prune --no-cache --force`` (the same settings), wrapped in ``cost.PeakMemory``
            (the resident set sampled every 2 ms on CPU, the CUDA allocator's peak on GPU); the kernel's
            own high-water mark (VmHWM) is reported beside it on CPU
and the table gives measured / estimated (target: within 0.85-1.15). The peak is in the first step
(the dense model), so most cases run 2 steps. A real run also records its speed, which the dry run
then turns into a time per step.

    python benchmarks/bench_estimate.py                         # every case (CPU; about 1 h on 2 busy cores)
    python benchmarks/bench_estimate.py --cases smollm2-f32,gemma3-f32
    python benchmarks/bench_estimate.py --device cuda --cases smollm2-bf16
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

from _common import RESULTS, PeakMemory, machine, table, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCALE_MODEL = ROOT / "cache" / "models" / "llama-3.2-1b-random"

#: name -> (model, dtype, num_samples, seq_len, batch_size or None, steps)
CASES: dict[str, tuple] = {
    "smollm2-f32": ("smollm2-135m", "float32", 16, 128, 8, 2),  # 2 micro-batches: gradients kept in .grad
    "smollm2-f32-1mb": ("smollm2-135m", "float32", 16, 128, None, 2),  # 1 micro-batch: gradients freed in hooks
    "smollm2-bf16": ("smollm2-135m", "bfloat16", 8, 128, 4, 1),  # float32 gradient sums beside bf16 weights
    "gemma3-f32": ("gemma3-270m", "float32", 8, 128, 4, 2),
    "gemma3-bf16": ("gemma3-270m", "bfloat16", 8, 128, 4, 1),
    "llama1b-f32": (str(SCALE_MODEL), "float32", 4, 128, None, 2),
    "llama1b-f32-2mb": (str(SCALE_MODEL), "float32", 4, 128, 2, 1),
    "llama1b-bf16": (str(SCALE_MODEL), "bfloat16", 4, 128, 2, 1),
    # bf16 where the CPU has no bf16 matmul kernels (AVX2 only: a bf16 backward runs ~60x slower than
    # float32): 2 micro-batches of 1 x 16 tokens, which still measure the bf16 weights and float32 sums
    "smollm2-bf16-tiny": ("smollm2-135m", "bfloat16", 2, 16, 1, 1),
    "gemma3-bf16-tiny": ("gemma3-270m", "bfloat16", 2, 16, 1, 1),
}


def prune_args(
    model: str,
    dtype: str,
    num_samples: int,
    seq_len: int,
    batch_size: int | None,
    steps: int,
    device: str,
    extra: tuple[str, ...] = (),
) -> list[str]:
    args = [
        "prune",
        "--model",
        model,
        "--dtype",
        dtype,
        "--device",
        device,
        "--num-samples",
        str(num_samples),
        "--seq-len",
        str(seq_len),
        "--steps",
        str(steps),
        "--max-sparsity",
        "0.2",
        *extra,
    ]
    return args + (["--batch-size", str(batch_size)] if batch_size else [])


def _child_measure(argv: list[str], device: str) -> None:
    """Run ``gisp prune`` in this process inside PeakMemory; print the peak and the run's own figures."""
    from gisp_engine.cli import main

    start = time.perf_counter()
    with PeakMemory(device) as mem:
        code = main(argv + ["--no-cache", "--force", "--quiet", "--json", "--out", os.environ["BENCH_OUT"]])
    wall = time.perf_counter() - start
    hwm = 0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    print(
        "BENCH " + json.dumps({"code": code, "peak": mem.peak, "baseline": mem.baseline, "vm_hwm": hwm, "wall_s": wall})
    )


def run_child(argv: list[str], env: dict | None = None, timeout: int = 7200) -> str:
    done = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def estimate(argv: list[str]) -> dict:
    out = run_child(["-m", "gisp_engine", *argv, "--dry-run", "--json"])
    return json.loads(out)


def measure_case(
    name: str,
    model: str,
    dtype: str,
    num_samples: int,
    seq_len: int,
    batch_size: int | None,
    steps: int,
    device: str = "cpu",
    out: Path | None = None,
    extra: tuple[str, ...] = (),
) -> dict:
    """One case: the measured run first (it records the speed a dry run reads), then the dry run."""
    argv = prune_args(model, dtype, num_samples, seq_len, batch_size, steps, device, extra)
    out = out or Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-estimate-{name}"
    raw = run_child([__file__, "--child", json.dumps(argv), "--device", device], env={"BENCH_OUT": str(out)})
    measured = json.loads(next(line for line in raw.splitlines() if line.startswith("BENCH "))[6:])
    plan = estimate(argv)
    trajectory = json.loads((out / "trajectory.json").read_text())
    walls = [s["wall_s"] for s in trajectory["steps"]]
    est = plan["memory"]
    parts = {p["name"]: p["bytes"] for p in est["parts"]}
    return {
        "case": name,
        "model": model,
        "dtype": dtype,
        "device": device,
        "argv": argv,
        "micro_batches": plan["micro_batches"],
        "tokens_per_step": plan["tokens_per_step"],
        "estimate_bytes": est["peak_bytes"],
        "estimate_parts": parts,
        "load_peak_bytes": est["load_peak_bytes"],
        "measured_bytes": measured["peak"],
        "vm_hwm_bytes": measured["vm_hwm"],
        "baseline_bytes": measured["baseline"],
        "ratio": measured["peak"] / est["peak_bytes"],
        "first_step_s": walls[0],
        "step_walls_s": walls,
        "wall_s": measured["wall_s"],
        "dry_run_time": plan["time"],
        "trajectory": str(out),
        "key": plan["key"],
    }


def rows_of(results: list[dict]) -> list[list]:
    gib = 1 << 30
    rows = []
    for r in results:
        p = r["estimate_parts"]
        rows.append(
            [
                r["case"],
                r["dtype"],
                r["micro_batches"],
                f"{p['runtime'] / gib:.2f}",
                f"{p['weights'] / gib:.2f}",
                f"{p['sliced copies'] / gib:.2f}",
                f"{p['gradient sums'] / gib:.2f}",
                f"{p['activations'] / gib:.2f}",
                f"{p['head'] / gib:.2f}",
                f"{r['load_peak_bytes'] / gib:.2f}",
                f"{r['estimate_bytes'] / gib:.2f}",
                f"{r['measured_bytes'] / gib:.2f}",
                f"{r['vm_hwm_bytes'] / gib:.2f}",
                f"{r['ratio']:.3f}",
            ]
        )
    return rows


HEADER = [
    "case",
    "dtype",
    "micro-batches",
    "runtime",
    "weights",
    "sliced copies",
    "grad sums",
    "activations",
    "head",
    "loading",
    "estimate GiB",
    "measured GiB",
    "VmHWM GiB",
    "measured/estimate",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child_measure(json.loads(args.child), args.device)
        return
    path = RESULTS / f"bench_estimate_{args.device.split(':')[0]}.json"
    done = {r["case"]: r for r in json.loads(path.read_text())["results"]} if path.is_file() else {}
    for name in args.cases.split(","):
        if name.startswith("llama1b") and not SCALE_MODEL.is_dir():
            print(f"{name}: skipped, no {SCALE_MODEL} (python benchmarks/_geometries.py llama-3.2-1b {SCALE_MODEL})")
            continue
        load = os.getloadavg()[0]
        result = measure_case(name, *CASES[name], device=args.device)
        result["load_average"] = load
        if path.is_file():  # another invocation may have added cases meanwhile
            done = {**{r["case"]: r for r in json.loads(path.read_text())["results"]}, **done}
        done[name] = result
        print(
            f"{name}: estimate {result['estimate_bytes'] / 2**30:.2f} GiB, "
            f"measured {result['measured_bytes'] / 2**30:.2f} "
            f"GiB, ratio {result['ratio']:.3f} (load average {load:.1f})",
            flush=True,
        )
        write_result(path.stem, {"machine": machine(), "results": list(done.values())})
    if path.is_file():
        done = {**{r["case"]: r for r in json.loads(path.read_text())["results"]}, **done}
    ordered = [done[c] for c in CASES if c in done]
    print(table(rows_of(ordered), HEADER))
    write_result(path.stem, {"machine": machine(), "results": ordered})


if __name__ == "__main__":
    main()
