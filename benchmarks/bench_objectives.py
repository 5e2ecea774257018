"""Does the objective matter? A perplexity trajectory against a margin trajectory on the embedded model.

Builds two GISP trajectories with the same schedule and the same number of calibration tokens:
``margin`` on the seven CMQA tasks, ``--calib-items`` items from every task's reserved
calibration pool (32 by default, about 33,000 tokens with the lm-eval prompts), and
``perplexity`` on general text (LAMBADA in place of the paper's C4), as many 128-token windows
as make the same token count. At the steps nearest the requested parameter sparsities (how
papers pick their 30%/40% models) it scores both, and the dense model, on the same held-out
items (the first ``--limit`` per task after the calibration pools): each task's ``acc`` (and
``acc_norm``), their average, and WikiText-2 perplexity with 128-token windows.

Intervals are 95%: Wilson's per task; for the 7-task average the normal interval of a mean of
independent proportions; for "margin − perplexity" the paired interval over the same items
(each item contributes the difference of the two picks' correctness).

Every evaluated point is stored in ``results/objectives-points/`` and reused when its settings
match, so an interrupted run continues, and two processes can share the work:

    python benchmarks/bench_objectives.py --quick                   # minutes: proves the pipeline, numbers mean little
    python benchmarks/bench_objectives.py --only margin &           # build the two trajectories in parallel
    python benchmarks/bench_objectives.py --only perplexity; wait
    python benchmarks/bench_objectives.py --share 0/2 &             # evaluate the points in two processes
    python benchmarks/bench_objectives.py --share 1/2; wait
    python benchmarks/bench_objectives.py                           # report (evaluates what is missing)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, machine, table, write_result  # noqa: E402

SHORT = {
    "boolq": "boolq",
    "piqa": "piqa",
    "hellaswag": "hswag",
    "winogrande": "wino",
    "arc_easy": "arc-e",
    "arc_challenge": "arc-c",
    "openbookqa": "obqa",
}
Z = 1.959964  # two-sided 95%


def wilson(k: float, n: int) -> tuple[float, float]:
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return centre - half, centre + half


def mean_of_proportions(correct: dict[str, list[int]]) -> tuple[float, float]:
    """The average over tasks of each task's accuracy, and the half-width of its 95% interval."""
    ps = {t: float(np.mean(c)) for t, c in correct.items()}
    var = sum(p * (1 - p) / len(correct[t]) for t, p in ps.items()) / len(ps) ** 2
    return float(np.mean(list(ps.values()))), Z * math.sqrt(var)


def paired_difference(a: dict[str, list[int]], b: dict[str, list[int]]) -> tuple[float, float]:
    """Average over tasks of (acc of a − acc of b) on the same items, and its paired 95% half-width."""
    diffs = {t: np.asarray(a[t], float) - np.asarray(b[t], float) for t in a}
    var = sum(d.var(ddof=1) / len(d) for d in diffs.values()) / len(diffs) ** 2
    return float(np.mean([d.mean() for d in diffs.values()])), Z * math.sqrt(var)


def evaluate_point(loaded, exclusions: dict, args) -> dict:
    """Per-item correctness on the first ``limit`` held-out items of every task, and WikiText-2 perplexity."""
    from gisp_engine.data.tasks import ACC_NORM_TASKS, CHOICE_TASKS
    from gisp_engine.evaluation.evaluate import evaluate_task
    from gisp_engine.evaluation.zeroshot import choice_picks

    tasks = {}
    for task in CHOICE_TASKS:
        done = choice_picks(
            loaded.model, loaded.tokenizer, task, args.limit, exclusions.get(task, ()), batch_size=args.eval_batch
        )
        items, picks, counts = done.items, done.picks, done.counts
        tasks[task] = {
            "items": [it.index for it in items],
            "correct": [int(p == it.gold) for (p, _), it in zip(picks, items)],
            # acc_norm only where lm-evaluation-harness reports it (not BoolQ, not WinoGrande)
            "correct_norm": [int(p == it.gold) for (_, p), it in zip(picks, items)] if task in ACC_NORM_TASKS else None,
            "counts": counts,
        }
        print(f"  {task}: acc {np.mean(tasks[task]['correct']):.3f} on {len(items)} items", flush=True)
    ppl = evaluate_task(
        loaded.model, loaded.tokenizer, "wikitext2", seq_len=128, limit=args.ppl_limit, batch_size=args.eval_batch
    )
    return {"tasks": tasks, "wikitext2": ppl.to_dict()}


def configs(args, tokens: int | None = None) -> dict:
    from gisp_engine import PruneConfig

    common = dict(
        model=args.model,
        steps=args.steps,
        max_sparsity=args.max_sparsity,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        seq_len=args.seq_len,
    )
    if args.calib_tokens:
        margin = PruneConfig(objective="margin", tasks="cmqa", calib_tokens=args.calib_tokens, **common)
        tokens = args.calib_tokens
    else:
        margin = PruneConfig(objective="margin", tasks="cmqa", calib_items=args.calib_items, **common)
    return {
        "perplexity": PruneConfig(
            objective="perplexity", calib="lambada", num_samples=max(1, math.ceil(tokens / args.seq_len)), **common
        ),
        "margin": margin,
    }


def margin_tokens(args) -> int:
    """The tokens the margin objective's items take (so the perplexity objective can take as many)."""
    from transformers import AutoTokenizer

    from gisp_engine.data.tasks import CHOICE_TASKS
    from gisp_engine.model.loading import resolve_model_dir
    from gisp_engine.pruning.objectives.margin import select_calibration

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(args.model))
    slices, _ = select_calibration(tokenizer, CHOICE_TASKS, None, args.seed, None, args.calib_items)
    for s in slices:
        print(f"  margin calibration, {s.task}: {len(s.items)} items, {s.tokens} tokens", flush=True)
    return sum(s.tokens for s in slices)


def point_path(name: str, settings: dict) -> Path:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return RESULTS / "objectives-points" / f"{name}-{digest}.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument(
        "--max-sparsity",
        type=float,
        default=0.5,
        help="structural ratio at the last step (0.5 in 8 steps: a point every 4-5%% of parameters, "
        "so that both objectives have one near 30%% and near 40%%)",
    )
    ap.add_argument("--calib-items", type=int, default=32, help="margin objective: calibration items per task")
    ap.add_argument(
        "--calib-tokens",
        type=int,
        default=None,
        help="instead of --calib-items: the same token budget for both objectives",
    )
    ap.add_argument("--seq-len", type=int, default=128, help="perplexity objective: tokens per window")
    ap.add_argument("--at", default="0.3,0.4", help="parameter sparsities to report (nearest steps)")
    ap.add_argument("--limit", type=int, default=150, help="held-out items per task")
    ap.add_argument("--ppl-limit", type=int, default=200, help="WikiText-2 128-token windows")
    ap.add_argument("--eval-batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["perplexity", "margin"], help="build this trajectory only, then stop")
    ap.add_argument(
        "--share",
        default=None,
        metavar="K/N",
        help="evaluate only every N-th point starting at K (0-based), then stop: run N processes in parallel",
    )
    ap.add_argument("--quick", action="store_true", help="2 steps, 2 items per task, 5 evaluation items per task")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.calib_items, args.limit, args.ppl_limit = 2, 2, 5, 5

    from gisp_engine import apply_step, load_model, prune
    from gisp_engine.core.progress import TqdmProgress
    from gisp_engine.data.tasks import CHOICE_TASKS, calibration_exclusions, load_task

    started = time.perf_counter()
    tokens = None if args.calib_tokens else margin_tokens(args)
    plan = configs(args, tokens)
    trajectories, prune_wall = {}, {}
    for name, config in plan.items():
        if args.only and name != args.only:
            continue
        t0 = time.perf_counter()
        bar = TqdmProgress()  # steps with loss and sparsity, and the micro-batches inside a step
        outcome = prune(config, progress=bar, resume=True)
        bar.close()
        trajectories[name] = outcome.trajectory
        prune_wall[name] = {
            "wall_s": time.perf_counter() - t0,
            "cache_hit": outcome.cache_hit,
            "loop_wall_s": outcome.trajectory.meta.get("wall_time_s"),
            "key": outcome.trajectory.key,
            "tokens": outcome.trajectory.meta["objective"].get("tokens_used", config.num_samples * config.seq_len),
        }
        how = "cache hit" if outcome.cache_hit else f"{prune_wall[name]['wall_s']:.0f} s"
        print(
            f"{name}: trajectory {outcome.trajectory.path} ({how}); "
            f"sparsities {[round(s.param_sparsity, 3) for s in outcome.trajectory.steps]}",
            flush=True,
        )
    if args.only:
        return

    from gisp_engine.core.fsutil import atomic_write_json
    from gisp_engine.data.tasks import PROMPTS_VERSION
    from gisp_engine.model.loading import resolve_device, resolve_dtype, resolve_model_dir, weights_sha256

    targets = [float(x) for x in args.at.split(",")]
    device = resolve_device(args.device)
    eval_settings = {
        "model": args.model,
        "weights": weights_sha256(resolve_model_dir(args.model)),
        "limit": args.limit,
        "ppl_limit": args.ppl_limit,
        "prompts": PROMPTS_VERSION,
        "dtype": str(resolve_dtype(args.dtype, device)).removeprefix("torch."),
        "device": device.type,
    }
    points = [("dense", None, 0.0, 0)] + [
        (name, traj, target, traj.step_nearest_sparsity(min(target, traj.max_param_sparsity)))
        for target in targets
        for name, traj in trajectories.items()
    ]
    share = tuple(int(x) for x in args.share.split("/")) if args.share else None
    results = {}
    for index, (name, traj, target, step) in enumerate(points):
        if share and index % share[1] != share[0]:
            continue
        settings = {**eval_settings, "trajectory": traj.key if traj else None, "step": step}
        path = point_path(name, settings)
        if path.exists():
            results[(name, target)] = dict(json.loads(path.read_text()), target=target)
            print(f"{name} at step {step}: stored in {path}", flush=True)
            continue
        print(f"evaluating {name} at step {step}", flush=True)
        t0 = time.perf_counter()
        loaded = load_model(args.model, args.device, args.dtype)
        if traj is not None:
            apply_step(loaded, traj, step)
        exclusions = calibration_exclusions(traj.meta.get("objective")) if traj else {}
        rec = traj.steps[step] if traj else None
        result = {
            "objective": None if traj is None else name,
            "target": target,
            "step": step,
            "param_sparsity": rec.param_sparsity if rec else 0.0,
            "settings": settings,
            **evaluate_point(loaded, exclusions, args),
            "wall_s": time.perf_counter() - t0,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, result)
        results[(name, target)] = result
    if share:
        return

    dense = results[("dense", 0.0)]
    for (name, _), r in results.items():  # every point is scored on the same items
        assert all(r["tasks"][t]["items"] == dense["tasks"][t]["items"] for t in CHOICE_TASKS), name

    def cell(r: dict, task: str) -> str:
        c = r["tasks"][task]["correct"]
        lo, hi = wilson(sum(c), len(c))
        return f"{np.mean(c):.3f} [{lo:.2f}, {hi:.2f}]"

    def row(r: dict, label: str, target: str) -> list:
        correct = {t: r["tasks"][t]["correct"] for t in CHOICE_TASKS}
        avg, half = mean_of_proportions(correct)
        norm = float(
            np.mean(
                [
                    np.mean(r["tasks"][t]["correct_norm"])
                    for t in CHOICE_TASKS
                    if r["tasks"][t]["correct_norm"] is not None
                ]
            )
        )
        return [
            label,
            target,
            r["step"],
            f"{r['param_sparsity']:.3f}",
            *(cell(r, t) for t in CHOICE_TASKS),
            f"{avg:.3f} ± {half:.3f}",
            f"{norm:.3f}",
            f"{r['wikitext2']['perplexity']:.1f}",
        ]

    rows = [row(dense, "dense", "0%")]
    differences = []
    for target in targets:
        for name in trajectories:
            rows.append(row(results[(name, target)], name, f"{target:.0%}"))
        m, p = results[("margin", target)], results[("perplexity", target)]
        diff, half = paired_difference(
            {t: m["tasks"][t]["correct"] for t in CHOICE_TASKS}, {t: p["tasks"][t]["correct"] for t in CHOICE_TASKS}
        )
        per_task = {
            t: paired_difference({t: m["tasks"][t]["correct"]}, {t: p["tasks"][t]["correct"]}) for t in CHOICE_TASKS
        }
        differences.append(
            {
                "target": target,
                "margin_step": m["step"],
                "perplexity_step": p["step"],
                "margin_param_sparsity": m["param_sparsity"],
                "perplexity_param_sparsity": p["param_sparsity"],
                "avg_acc_difference": diff,
                "ci95_half_width": half,
                "per_task": per_task,
            }
        )
    # what always answering the same option scores: a model that collapses onto one answer reaches it
    constant = {
        t: max(np.bincount([load_task(t).items[i].gold for i in dense["tasks"][t]["items"]]))
        / len(dense["tasks"][t]["items"])
        for t in CHOICE_TASKS
    }
    rows.append(
        [
            "one answer always",
            "",
            "",
            "",
            *(f"{constant[t]:.3f}" for t in CHOICE_TASKS),
            f"{np.mean(list(constant.values())):.3f}",
            "",
            "",
        ]
    )

    header = [
        "objective",
        "target",
        "step",
        "params",
        *(SHORT[t] for t in CHOICE_TASKS),
        "avg acc ± 95%",
        "acc_norm avg (5)",
        "wt2 ppl",
    ]
    calib = (
        f"{args.calib_tokens} calibration tokens each"
        if args.calib_tokens
        else f"margin: {args.calib_items} items per task ({tokens} tokens); perplexity: "
        f"{plan['perplexity'].num_samples} LAMBADA windows of {args.seq_len} tokens"
    )
    print(f"\nGISP on {args.model}: {args.steps} steps to structural {args.max_sparsity}; {calib}")
    print(
        f"zero-shot acc [95% Wilson interval] on the first {args.limit} held-out items per task (the same items "
        f"for every row); WikiText-2 perplexity over {dense['wikitext2']['windows']} windows of 128 tokens"
    )
    print(table(rows, header))
    for d in differences:
        print(
            f"margin − perplexity at {d['target']:.0%} ({d['margin_param_sparsity']:.1%} vs "
            f"{d['perplexity_param_sparsity']:.1%} of parameters): average acc {d['avg_acc_difference']:+.3f} "
            f"± {d['ci95_half_width']:.3f} (paired 95% interval); per task: "
            + ", ".join(f"{SHORT[t]} {v:+.3f} ± {h:.3f}" for t, (v, h) in d["per_task"].items())
        )
    summary = [
        {k: v for k, v in r.items() if k != "tasks"}
        | {
            "tasks": {
                t: {
                    "acc": float(np.mean(v["correct"])),
                    "acc_norm": None if v["correct_norm"] is None else float(np.mean(v["correct_norm"])),
                    "items": len(v["correct"]),
                    "ci95": wilson(sum(v["correct"]), len(v["correct"])),
                }
                for t, v in r["tasks"].items()
            }
        }
        for r in results.values()
    ]
    path = write_result(
        "objectives" + ("-quick" if args.quick else ""),
        {
            "settings": vars(args),
            "machine": machine(),
            "trajectories": prune_wall,
            "results": summary,
            "differences": differences,
            "one_answer_always": constant,
            "wall_s": time.perf_counter() - started,
        },
    )
    print(f"\nwritten to {path} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
