"""Cost in llama.cpp: the 10-step example's GGUFs against the dense GGUF, and which widths run fastest.

On the 10-step example (``cache/examples/smollm2-135m-ppl-iterative``, the embedded SmolLM2-135M):

  steps    the steps nearest 0/22/32/43/53% parameter sparsity, each written per-layer (``deci``) by
           ``export_gguf`` in f16 and q4_k_m, timed in llama.cpp with 1 and 2 threads: prefill speed-up
           (one 512-token sequence), decode speed-up (128 tokens after a 16-token prompt), file size and peak
           memory, each against the dense model written the same way (step 0 of the same export)
  layout   at steps 6 (32%) and 10 (53%): per-layer as pruned, per-layer with every MLP width rounded to 32
           and to 64 (``--align``), and uniform (the family's stock ``llama`` arch), f16, 1 and 2 threads
  pytorch  the same step per-layer against uniform in PyTorch (float32 sliced model against the uniform
           export loaded by ``load_pruned``, 1 x 512 prefill, 32 decode tokens, 1 thread, through
           ``cost.measure_costs``); PyTorch's aligned figures are bench_align.py's, read from
           ``results/bench_align_points.json`` (not measured again here)

Every llama.cpp group is one ``cost_llamacpp.measure_gguf_costs`` call: the dense GGUF and every point of the
group loaded at once (``GGUFRun``: no mmap; its peak memory measured as it loads and runs once), their repeats
interleaved, so that a busy machine slows them alike. Speed-ups are the median of the repeats' ratios to dense,
[lowest, highest] beside it (``cost.cost_ratios``, as ``gisp sweep --cost --runtime llamacpp``). The load average
is recorded before and after each group.

    flock /tmp/gisp-heavy.lock python benchmarks/bench_gguf.py                # everything (~20-30 min, 2 cores)
    python benchmarks/bench_gguf.py --part steps --threads 1 --outtypes f16   # a part
    python benchmarks/bench_gguf.py --quick                                    # smoke check (short workload)
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, machine, table, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "cache" / "examples" / "smollm2-135m-ppl-iterative"
TARGETS = (0.0, 0.22, 0.32, 0.43, 0.53)
LAYOUT_STEPS = (6, 10)
VARIANTS = {
    "per-layer": {},
    "per-layer --align 32": {"align": 32},
    "per-layer --align 64": {"align": 64},
    "uniform": {"uniform": True},
}
NAME = "bench_gguf"


def load(msg: str) -> dict:
    one, five, fifteen = os.getloadavg()
    return {"when": msg, "load1": one, "load5": five, "load15": fifteen}


def write(dense, traj, step: int, out: Path, outtype: str, threads: int, **how):
    """``export_gguf`` of ``step`` from a copy of the dense model (an export slices what it is given)."""
    from gisp_engine.export.gguf import export_gguf

    working = dataclasses.replace(dense, model=copy.deepcopy(dense.model))
    try:
        return export_gguf(working, traj, step, out, outtype=outtype, n_threads=threads, **how)
    finally:
        del working
        gc.collect()


def time_group(files: dict[str, Path], dense_file: Path, spec) -> tuple[dict, list[dict]]:
    """Every file and the dense one loaded together, timed with interleaved repeats; ratios to dense."""
    from gisp_engine.evaluation.cost import cost_ratios
    from gisp_engine.evaluation.cost_llamacpp import GGUFRun, measure_gguf_costs

    loads = [load("before")]
    runs = [GGUFRun(dense_file, spec)]
    try:
        runs += [GGUFRun(path, spec) for path in files.values()]
        costs = [c.to_dict() for c in measure_gguf_costs(runs)]
    finally:
        for r in runs:
            r.close()
    loads.append(load("after"))
    dense = costs[0]
    out = {"dense": {"cost": dense}}
    for name, cost in zip(files, costs[1:]):
        out[name] = {"cost": cost, "ratios": cost_ratios(cost, dense)}
    return out, loads


def part_steps(dense, traj, args, tmp: Path) -> dict:
    from gisp_engine.evaluation.cost_llamacpp import GGUFCostSpec

    steps = sorted({traj.step_nearest_sparsity(t) for t in TARGETS} - {0})
    result = {}
    for outtype in args.outtypes:
        files = {}
        for step in [0, *steps]:
            exported = write(dense, traj, step, tmp / f"{outtype}-{step}", outtype, max(args.threads))
            files[step] = exported.gguf_path
            print(f"  wrote step {step} {outtype}: {exported.gguf_path.stat().st_size / 2**20:.1f} MiB", flush=True)
        for threads in args.threads:
            spec = GGUFCostSpec(
                seq_len=args.seq_len, new_tokens=args.new_tokens, repeats=args.repeats, outtype=outtype, threads=threads
            )
            start = time.perf_counter()
            group, loads = time_group({str(s): files[s] for s in steps}, files[0], spec)
            result[f"{outtype} {threads}t"] = {
                "spec": spec.to_dict(),
                "loads": loads,
                "points": group,
                "param_sparsity": {str(s): traj.steps[s].param_sparsity for s in steps},
                "wall_s": time.perf_counter() - start,
            }
            print(f"  {outtype}, {threads} threads: {time.perf_counter() - start:.0f} s, load {loads}", flush=True)
        for path in files.values():
            path.unlink()
    return result


def part_layout(dense, traj, args, tmp: Path) -> dict:
    from gisp_engine.evaluation.cost_llamacpp import GGUFCostSpec

    files = {}
    dense_file = write(dense, traj, 0, tmp / "layout-dense", "f16", 1).gguf_path
    for step in LAYOUT_STEPS:
        for name, how in VARIANTS.items():
            exported = write(dense, traj, step, tmp / f"layout-{step}-{name.replace(' ', '')}", "f16", 1, **how)
            files[f"{step} {name}"] = exported.gguf_path
            files_meta = exported.manifest
            print(
                f"  wrote step {step} {name}: params {files_meta['param_sparsity']:.4f}, "
                f"{exported.gguf_path.stat().st_size / 2**20:.1f} MiB",
                flush=True,
            )
    sparsity = {}
    for key, path in files.items():
        manifest = json.loads((path.parent / "gisp_manifest.json").read_text())
        sparsity[key] = {
            "param_sparsity": manifest["param_sparsity"],
            "kv_heads": manifest["gguf"]["kv_heads"],
            "padding_overhead": manifest["gguf"]["padding_overhead"],
            "arch": manifest["gguf"]["arch"],
        }
    result = {}
    for threads in args.threads:
        spec = GGUFCostSpec(
            seq_len=args.seq_len, new_tokens=args.new_tokens, repeats=args.repeats, outtype="f16", threads=threads
        )
        start = time.perf_counter()
        group, loads = time_group(files, dense_file, spec)
        result[f"f16 {threads}t"] = {
            "spec": spec.to_dict(),
            "loads": loads,
            "points": group,
            "export": sparsity,
            "wall_s": time.perf_counter() - start,
        }
        print(f"  layout, {threads} threads: {time.perf_counter() - start:.0f} s, load {loads}", flush=True)
    return result


def part_pytorch(dense, traj, args, tmp: Path) -> dict:
    """Per-layer (sliced) against uniform (the stock-code export) at the same step, in PyTorch."""
    from bench_align import Point, sliced

    from gisp_engine.evaluation.cost import CostSpec, cost_ratios, measure_costs
    from gisp_engine.export.hf import export_subnetwork, load_pruned

    result = {"aligned_from_bench_align": aligned_from_bench_align()}
    spec = CostSpec(batch=1, seq_len=args.seq_len, new_tokens=32, repeats=3, threads=1)
    for step in LAYOUT_STEPS:
        point = Point(f"{step}", 0.0, "unaligned", None, traj, step, traj.keep_mask(step))
        per_layer = sliced(dense, point)
        working = dataclasses.replace(dense, model=copy.deepcopy(dense.model))
        folder = export_subnetwork(working, traj, step, tmp / f"uniform-{step}", uniform=True).folder
        del working
        uniform = load_pruned(folder, dtype="float32").model
        loads = [load("before")]
        start = time.perf_counter()
        costs = [c.to_dict() for c in measure_costs([per_layer, uniform, dense.model], spec)]
        loads.append(load("after"))
        result[str(step)] = {
            "spec": spec.to_dict(),
            "loads": loads,
            "wall_s": time.perf_counter() - start,
            "points": {
                "dense": {"cost": costs[2]},
                "per-layer": {"cost": costs[0], "ratios": cost_ratios(costs[0], costs[2])},
                "uniform": {"cost": costs[1], "ratios": cost_ratios(costs[1], costs[2])},
            },
        }
        print(f"  pytorch step {step}: {time.perf_counter() - start:.0f} s", flush=True)
        del per_layer, uniform
        gc.collect()
    return result


def aligned_from_bench_align() -> dict:
    """bench_align.py's PyTorch speed-ups of the aligned points (as pruned / export32 / export64), as measured."""
    path = RESULTS / "bench_align_points.json"
    if not path.is_file():
        return {}
    out = {}
    for group, points in json.loads(path.read_text()).get("speed", {}).items():
        for ident, speed in points.items():
            step_how = ident.split("@", 1)[1]  # "6 as pruned", "6 export64"
            out[f"{step_how} | {group.split('|')[0]}"] = {
                k: speed[k] for k in ("prefill", "prefill_low", "prefill_high", "decode", "decode_low", "decode_high")
            }
    return out


def speed(r: dict, what: str) -> str:
    return f"{r[f'{what}_speedup']:.2f}× [{r[f'{what}_speedup_low']:.2f}, {r[f'{what}_speedup_high']:.2f}]"


def print_tables(result: dict) -> None:
    rows = []
    for group, g in result.get("steps", {}).items():
        for step, sparsity in g["param_sparsity"].items():
            c, r = g["points"][step]["cost"], g["points"][step]["ratios"]
            rows.append(
                [
                    group,
                    step,
                    f"{sparsity:.0%}",
                    speed(r, "prefill"),
                    speed(r, "decode"),
                    f"{c['file_bytes'] / 2**20:.0f} MiB ({r['weight_ratio']:.2f})",
                    f"{c['peak_bytes'] / 2**20:.0f} MiB ({r['memory_ratio']:.2f})",
                ]
            )
    if rows:
        spec = next(iter(result["steps"].values()))["spec"]
        print(
            f"llama.cpp, {spec['seq_len']}-token prefill, {spec['new_tokens']}-token decode, median of "
            f"{spec['repeats']} interleaved repeats [lowest, highest ratio]"
        )
        print(table(rows, ["GGUF, threads", "step", "params removed", "prefill", "decode", "file", "peak memory"]))
    rows = []
    for group, g in result.get("layout", {}).items():
        for name, p in g["points"].items():
            if name == "dense":
                continue
            e, r = g["export"][name], p["ratios"]
            rows.append(
                [
                    group,
                    name,
                    f"{e['param_sparsity']:.1%}",
                    e["kv_heads"],
                    speed(r, "prefill"),
                    speed(r, "decode"),
                    f"{r['weight_ratio']:.3f}",
                ]
            )
    if rows:
        print(table(rows, ["llama.cpp", "step, widths", "params removed", "KV heads", "prefill", "decode", "file"]))
    rows = []
    for step, g in ((s, g) for s, g in result.get("pytorch", {}).items() if s != "aligned_from_bench_align"):
        for name in ("per-layer", "uniform"):
            r = g["points"][name]["ratios"]
            rows.append(
                [
                    f"PyTorch f32 1t, step {step}",
                    name,
                    speed(r, "prefill"),
                    speed(r, "decode"),
                    f"{r['param_ratio']:.3f}",
                ]
            )
    for ident, s in result.get("pytorch", {}).get("aligned_from_bench_align", {}).items():
        rows.append(
            [
                f"PyTorch (bench_align) {ident.split(' | ')[1]}",
                ident.split(" | ")[0],
                f"{s['prefill']:.2f}× [{s['prefill_low']:.2f}, {s['prefill_high']:.2f}]",
                f"{s['decode']:.2f}× [{s['decode_low']:.2f}, {s['decode_high']:.2f}]",
                "",
            ]
        )
    if rows:
        print(table(rows, ["runtime", "step, widths", "prefill", "decode", "params (× dense)"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["steps", "layout", "pytorch", "all"], default="all")
    ap.add_argument("--outtypes", default="f16,q4_k_m")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="a short workload (64 prefill, 8 decode, 3 repeats)")
    ap.add_argument("--print", action="store_true", help="print the tables of the last results, measure nothing")
    args = ap.parse_args()
    args.outtypes = args.outtypes.split(",")
    args.threads = [int(t) for t in args.threads.split(",")]
    if args.quick:
        args.seq_len, args.new_tokens, args.repeats = 64, 8, 3
    name = NAME + ("_quick" if args.quick else "")
    previous = RESULTS / f"{name}.json"
    result = json.loads(previous.read_text()) if previous.is_file() else {}
    if args.print:
        print_tables(result)
        return

    import torch

    from gisp_engine.model import llamacpp
    from gisp_engine.model.loading import load_model
    from gisp_engine.pruning.subnetwork import recorded_model
    from gisp_engine.pruning.trajectory import Trajectory

    torch.set_num_threads(max(args.threads))
    traj = Trajectory.load(EXAMPLE)
    dense = load_model(recorded_model(traj), "cpu", "float32")
    result.update(
        machine=machine() | {"llama_cpp": llamacpp.version(), "nproc": os.cpu_count()},
        command=" ".join(sys.argv),
        example=traj.key,
    )
    parts = ["steps", "layout", "pytorch"] if args.part == "all" else [args.part]
    with tempfile.TemporaryDirectory(prefix="bench-gguf-") as tmp:
        for part in parts:
            print(f"== {part}", flush=True)
            start = time.perf_counter()
            result[part] = {"steps": part_steps, "layout": part_layout, "pytorch": part_pytorch}[part](
                dense, traj, args, Path(tmp)
            )
            result.setdefault("wall_s", {})[part] = time.perf_counter() - start
            write_result(name, result)  # each part as soon as it is measured
    print_tables(result)
    print(f"written {RESULTS / (name + '.json')}")


if __name__ == "__main__":
    main()
