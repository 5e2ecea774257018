"""A 1B-class geometry end to end on this CPU: Llama-3.2-1B's exact configuration, random weights.

16 layers, hidden 2048, 32 query heads over 8 KV heads (head_dim 64), MLP 8192, a 128,256-entry
vocabulary, tied embeddings, RoPE scaling ``llama3`` (factor 32, max_position_embeddings 131072,
rope_theta 500000), weights in bfloat16 as published; the tokenizer is the embedded model's
(``_geometries.py``). Every stage runs as a user runs it, each in a fresh process:

  dry run   ``gisp prune --dry-run``: the plan and the estimate, no weights loaded
  prune     2 steps (4 x 128 tokens of LAMBADA per step), peak memory measured (``bench_estimate``)
  sweep     ``gisp sweep --task wikitext2 --limit 4 --cost`` over the 3 points (cost scaled down: see below)
  export    per-layer, ``--uniform`` and elastic (``--all-steps``) of the last step, their sizes on disk
  load      ``gisp_engine.load_pruned`` of each; the per-layer and the elastic export give the same logits

    python benchmarks/bench_scale.py                      # about 1-2 h on 2 busy cores, 7-10 GiB of memory
    python benchmarks/bench_scale.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, machine, table, write_result  # noqa: E402
from _geometries import write_random_model  # noqa: E402
from bench_estimate import CASES, measure_case  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "cache" / "models" / "llama-3.2-1b-random"


def gisp(*argv: str, timeout: int = 7200) -> tuple[dict, float]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "gisp_engine", *argv, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"gisp {' '.join(argv)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout), time.perf_counter() - start


def merge_estimate_case(name: str, case: dict, device: str) -> None:
    """The prune stage is bench_estimate's case ``name`` (the same argv): its row in that table too."""
    path = RESULTS / f"bench_estimate_{device.split(':')[0]}.json"
    done = {r["case"]: r for r in json.loads(path.read_text())["results"]} if path.is_file() else {}
    done[name] = {**case, "case": name}
    write_result(path.stem, {"machine": machine(), "results": [done[c] for c in CASES if c in done]})


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def load_check(exports: dict[str, Path], step: int, device: str) -> dict:
    """``load_pruned`` of every export in a fresh process; per-layer and elastic logits compared."""
    code = f"""
import json, torch
from gisp_engine import load_pruned
exports = {json.dumps({k: str(v) for k, v in exports.items()})}
ids = torch.randint(0, 49152, (2, 32), generator=torch.Generator().manual_seed(0))
out, logits = {{}}, {{}}
for kind, folder in exports.items():
    pm = load_pruned(folder, device={device!r}, **({{"step": {step}}} if kind == "elastic" else {{}}))
    with torch.no_grad():
        logits[kind] = pm.model(input_ids=ids.to(pm.device)).logits.float().cpu()
    out[kind] = {{"params": pm.param_count, "dtype": str(pm.dtype), "kind": pm.manifest["kind"],
                 "finite": bool(torch.isfinite(logits[kind]).all())}}
    del pm
out["per_layer_vs_elastic_max_abs"] = float((logits["per-layer"] - logits["elastic"]).abs().max())
print("BENCH " + json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"load_pruned failed:\n{done.stderr[-3000:]}")
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("BENCH "))[6:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", help="of the pruning run (the checkpoint is bfloat16)")
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument(
        "--sweep-dtype",
        default="float32",
        help="of the sweep, which holds the dense model beside the sliced one (--cost): about 2x weights",
    )
    parser.add_argument("--reuse", action="store_true", help="continue after a finished prune stage (its prune.json)")
    parser.add_argument("--out", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "bench-scale"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": machine(), "load_average_start": os.getloadavg()[0], "model": str(MODEL)}
    start = time.perf_counter()
    write_random_model("llama-3.2-1b", MODEL)
    result["model_bytes"] = folder_bytes(MODEL)
    result["write_model_s"] = time.perf_counter() - start

    saved = out / "prune.json"
    if args.reuse and saved.is_file():  # a run stopped after pruning continues from there
        case = json.loads(saved.read_text())
    else:
        case = measure_case(
            "llama1b-" + args.dtype,
            str(MODEL),
            args.dtype,
            args.num_samples,
            args.seq_len,
            None,
            2,
            args.device,
            out / "trajectory",
        )
        case["load_average"] = result["load_average_start"]
        saved.write_text(json.dumps(case, indent=1) + "\n")
        if args.dtype == "float32" and args.num_samples == 4 and args.seq_len == 128:  # bench_estimate's llama1b-f32
            merge_estimate_case("llama1b-f32", case, args.device)
    result["prune"] = case
    print(
        f"prune: {case['step_walls_s']} s cumulative per step, peak {case['measured_bytes'] / 2**30:.2f} GiB, "
        f"estimate {case['estimate_bytes'] / 2**30:.2f} GiB",
        flush=True,
    )
    traj = out / "trajectory"

    sweep, sweep_s = gisp(
        "sweep",
        "--trajectory",
        str(traj),
        "--task",
        "wikitext2",
        "--limit",
        "4",
        "--cost",
        "--cost-batch",
        "1",
        "--cost-seq-len",
        "128",
        "--cost-new-tokens",
        "8",
        "--cost-repeats",
        "3",
        "--device",
        args.device,
        "--dtype",
        args.sweep_dtype,
        "--quiet",
    )
    result["sweep"] = {"wall_s": sweep_s, "rows": sweep.get("rows", sweep)}
    print(f"sweep: {sweep_s:.0f} s", flush=True)

    exports, sizes, export_s = {}, {}, {}
    for kind, extra in (("per-layer", []), ("uniform", ["--uniform"]), ("elastic", ["--all-steps"])):
        folder = out / f"export-{kind}"
        shutil.rmtree(folder, ignore_errors=True)
        step_args = [] if kind == "elastic" else ["--step", "2"]
        info, export_s[kind] = gisp(
            "export", "--trajectory", str(traj), *step_args, *extra, "--out", str(folder), "--quiet"
        )
        exports[kind], sizes[kind] = folder, folder_bytes(folder)
        print(f"export {kind}: {sizes[kind] / 2**30:.2f} GiB in {export_s[kind]:.0f} s", flush=True)
    result["exports"] = {k: {"bytes": sizes[k], "wall_s": export_s[k], "folder": str(exports[k])} for k in exports}
    result["load"] = load_check(exports, 2, args.device)
    result["wall_s"] = time.perf_counter() - start
    result["load_average_end"] = os.getloadavg()[0]

    gib = 1 << 30
    walls = case["step_walls_s"]
    rows = [
        ["dense checkpoint (bf16)", f"{result['model_bytes'] / gib:.2f} GiB", ""],
        [
            "prune: first step / second step",
            f"{walls[0]:.0f} s / {walls[1] - walls[0]:.0f} s",
            f"{case['tokens_per_step']} tokens per step, {args.dtype}",
        ],
        [
            "prune: peak memory measured / estimated",
            f"{case['measured_bytes'] / gib:.2f} / {case['estimate_bytes'] / gib:.2f} GiB",
            f"ratio {case['ratio']:.3f}",
        ],
        ["sweep (3 points, wikitext2 x 4 windows, cost)", f"{sweep_s:.0f} s", ""],
        *[[f"export {k}", f"{sizes[k] / gib:.2f} GiB", f"{export_s[k]:.0f} s"] for k in exports],
        *[
            [f"load_pruned {k}", f"{result['load'][k]['params']:,} parameters", result["load"][k]["dtype"]]
            for k in exports
        ],
        ["per-layer vs elastic logits, max |diff|", f"{result['load']['per_layer_vs_elastic_max_abs']:.2e}", ""],
    ]
    print(table(rows, ["what", "figure", "note"]))
    write_result(f"bench_scale_{args.device.split(':')[0]}", result)


if __name__ == "__main__":
    main()
