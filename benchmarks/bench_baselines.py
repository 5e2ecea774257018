"""Does GISP beat local and one-shot pruning here? The paper's tables, in shape, on the embedded model.

For dense, GISP (iterative), one-shot GISP and every baseline, all calibrated on the same
text, sizes and seed: WikiText-2 perplexity (128- and 2048-token windows, labelled) at the
trajectory steps nearest 20/30/40/50% parameter sparsity; and the seven-task held-out
accuracy average at 40% for GISP with the margin objective against Wanda-sp and FLAP.
Prints markdown tables, writes JSON and a PNG of perplexity against sparsity.

    python benchmarks/bench_baselines.py                      # CPU setting (2 cores: under 60 minutes)
    python benchmarks/bench_baselines.py --setting gpu        # the paper's calibration sizes, full evaluations
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import RESULTS, machine, table, write_result  # noqa: E402

SETTINGS = {
    # calibration 16 x 128 tokens; evaluation limits keep each WikiText-2 pass near 12k tokens
    "cpu": dict(
        num_samples=16,
        seq_len=128,
        gisp_steps=10,
        fixed_steps=30,
        max_sparsity=0.6,
        margin_tokens=4096,
        margin_steps=10,
        ppl_limit={128: 100, 2048: 6},
        acc_limit=100,
    ),
    # the paper's sizes: 2000 x 256 tokens, 0.6% of structures per step to 0.7, 512k margin tokens
    "gpu": dict(
        num_samples=2000,
        seq_len=256,
        gisp_steps=112,
        fixed_steps=112,
        max_sparsity=0.7,
        margin_tokens=512_000,
        margin_steps=112,
        ppl_limit={128: None, 2048: None},
        acc_limit=None,
    ),
}
METHODS = ("gisp", "gisp-oneshot", "llm-pruner", "magnitude", "random", "wanda-sp", "flap")
TARGETS = (0.2, 0.3, 0.4, 0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="cpu")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--calib", default="lambada")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--report", metavar="JSON", help="print the tables of an earlier run's JSON again, run nothing")
    args = ap.parse_args()
    s = SETTINGS[args.setting]
    if args.report:
        old = json.loads(Path(args.report).read_text())
        perplexity = old["perplexity"]
        perplexity["dense"] = {int(k): v for k, v in perplexity["dense"].items()}
        return report(args, old["setting"], perplexity, old["accuracy"], old["wall_time_s"])

    from gisp_engine import PruneConfig, apply_step, load_model, prune, wikitext2_perplexity
    from gisp_engine.data.tasks import calibration_exclusions
    from gisp_engine.evaluation.zeroshot import evaluate_choice_tasks

    started = time.perf_counter()
    common = dict(
        model=args.model,
        calib=args.calib,
        num_samples=s["num_samples"],
        seq_len=s["seq_len"],
        max_sparsity=s["max_sparsity"],
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
    )
    trajectories = {}
    for method in args.methods.split(","):
        steps = s["gisp_steps"] if method == "gisp" else s["fixed_steps"]
        t0 = time.perf_counter()
        trajectories[method] = prune(PruneConfig(method=method, steps=steps, **common)).trajectory
        print(f"{method}: trajectory in {time.perf_counter() - t0:.0f} s ({trajectories[method].path})", flush=True)

    def fresh():
        return load_model(args.model, args.device, args.dtype)

    def perplexity(model, tok, window):
        return wikitext2_perplexity(model, tok, seq_len=window, limit=s["ppl_limit"][window]).perplexity

    results: dict = {"dense": {}, "methods": {}}
    dense = fresh()
    for window in (128, 2048):
        results["dense"][window] = perplexity(dense.model, dense.tokenizer, window)
    variants = [(m, m, False) for m in trajectories] + ([("flap+bias", "flap", True)] if "flap" in trajectories else [])
    for name, method, bias in variants:
        traj = trajectories[method]
        rows = results["methods"][name] = []
        for target in TARGETS:
            step = traj.step_nearest_sparsity(min(target, traj.max_param_sparsity))
            loaded = fresh()
            apply_step(loaded, traj, step, bias_compensation=bias)
            row = {"target": target, "step": step, "param_sparsity": traj.steps[step].param_sparsity}
            for window in (128, 2048):
                row[f"ppl_{window}"] = perplexity(loaded.model, loaded.tokenizer, window)
            rows.append(row)
        print(f"{name}: " + ", ".join(f"{r['param_sparsity']:.2f}: {r['ppl_128']:.1f}" for r in rows), flush=True)

    accuracy = {}
    if not args.skip_accuracy:
        margin = prune(
            PruneConfig(
                method="gisp",
                objective="margin",
                tasks="cmqa",
                calib_tokens=s["margin_tokens"],
                steps=s["margin_steps"],
                **{k: v for k, v in common.items() if k != "calib"},
            )
        ).trajectory
        # every model is evaluated on the items none of them calibrated on
        exclusions = calibration_exclusions(margin.meta.get("objective"))
        for name, traj in (
            ("gisp-margin", margin),
            ("wanda-sp", trajectories.get("wanda-sp")),
            ("flap", trajectories.get("flap")),
            ("gisp-ppl", trajectories.get("gisp")),
        ):
            if traj is None:
                continue
            step = traj.step_nearest_sparsity(min(0.4, traj.max_param_sparsity))
            loaded = fresh()
            apply_step(loaded, traj, step)
            suite = evaluate_choice_tasks(loaded.model, loaded.tokenizer, "cmqa", s["acc_limit"], exclusions)
            accuracy[name] = {
                "step": step,
                "param_sparsity": traj.steps[step].param_sparsity,
                "average": suite.average_acc,
                **{t.task: t.acc for t in suite.tasks},
            }
            print(
                f"{name} at {accuracy[name]['param_sparsity']:.3f}: average accuracy {suite.average_acc:.4f}",
                flush=True,
            )
        dense = fresh()
        suite = evaluate_choice_tasks(dense.model, dense.tokenizer, "cmqa", s["acc_limit"], exclusions)
        accuracy["dense"] = {
            "step": 0,
            "param_sparsity": 0.0,
            "average": suite.average_acc,
            **{t.task: t.acc for t in suite.tasks},
        }

    report(args, s, results, accuracy, time.perf_counter() - started)


def report(args, s, results, accuracy, wall) -> None:
    header = ["method"] + [f"{int(t * 100)}% ({w})" for w in (128, 2048) for t in TARGETS]
    rows = [["dense"] + [results["dense"][w] for w in (128, 2048) for _ in TARGETS]]
    for name, cells in results["methods"].items():
        rows.append([name] + [c[f"ppl_{w}"] for w in (128, 2048) for c in cells])
    print(
        f"\n## WikiText-2 perplexity ({args.model}, {args.setting} setting; windows of 128 / 2048 tokens, "
        f"limits {s['ppl_limit']}; columns: nearest step to the parameter sparsity)\n"
    )
    print(table(rows, header))
    print(
        "\nactual parameter sparsity of each column: "
        + "; ".join(
            f"{name} " + "/".join(f"{c['param_sparsity']:.3f}" for c in cells)
            for name, cells in results["methods"].items()
        )
    )
    claims = {}
    m = results["methods"]
    for key, (a, b, col, what) in {
        "gisp_below_wanda_sp_at_40": ("gisp", "wanda-sp", 2, "claim 1, GISP below Wanda-sp at 40%"),
        "iterative_below_oneshot_at_50": ("gisp", "gisp-oneshot", 3, "claim 2, iterative below one-shot at 50%"),
    }.items():
        if a not in m or b not in m:
            continue
        # the two nearest steps need not sit at the same sparsity: read method a at b's sparsity too
        at = m[b][col]["param_sparsity"]
        va, vb, va_matched = m[a][col]["ppl_128"], m[b][col]["ppl_128"], interpolate(m[a], at)
        held = va_matched < vb
        claims[key] = {a: va, b: vb, f"{a}_at_{b}_sparsity": va_matched, "sparsity": at, "held": held}
        print(
            f"{what} (128-token windows): {va:.2f} at {m[a][col]['param_sparsity']:.3f} vs {vb:.2f} at {at:.3f}; "
            f"{a} at {at:.3f} (log-linear between its steps): {va_matched:.2f}: {'held' if held else 'did not hold'}"
        )
    if accuracy:
        tasks = [k for k in next(iter(accuracy.values())) if k not in ("step", "param_sparsity", "average")]
        print(f"\n## Seven-task held-out accuracy at ~40% parameter sparsity (limit {s['acc_limit']} per task)\n")
        print(
            table(
                [[n, a["param_sparsity"]] + [a[t] for t in tasks] + [a["average"]] for n, a in accuracy.items()],
                ["model", "param sparsity"] + tasks + ["average"],
            )
        )
    print(f"\nwall time {wall / 60:.1f} min")
    payload = {
        "args": vars(args),
        "setting": s,
        "machine": machine(),
        "perplexity": results,
        "accuracy": accuracy,
        "claims": claims,
        "wall_time_s": wall,
    }
    path = write_result(f"bench_baselines_{args.setting}", payload)
    png = plot(results, RESULTS / f"bench_baselines_{args.setting}.png")
    print(f"wrote {path} and {png}")


def interpolate(cells: list[dict], sparsity: float) -> float:
    """Perplexity (128-token windows) at ``sparsity``, log-linear between the evaluated steps."""
    xs = [c["param_sparsity"] for c in cells]
    ys = [math.log(c["ppl_128"]) for c in cells]
    return math.exp(float(np.interp(sparsity, xs, ys)))


def plot(results, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, window in zip(axes, (128, 2048)):
        for name, cells in results["methods"].items():
            ax.plot([c["param_sparsity"] for c in cells], [c[f"ppl_{window}"] for c in cells], marker="o", label=name)
        ax.axhline(results["dense"][window], color="grey", linestyle=":", label="dense")
        ax.set_yscale("log")
        ax.set_xlabel("parameter sparsity")
        ax.set_ylabel(f"WikiText-2 perplexity ({window}-token windows)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


if __name__ == "__main__":
    main()
