"""Does the objective matter? A perplexity trajectory against a margin trajectory on the embedded model.

Builds two GISP trajectories with the same schedule and the same calibration token budget:
``perplexity`` (general text: LAMBADA in place of the paper's C4) and ``margin`` (the seven
CMQA tasks, drawn from their reserved calibration pools). At the steps nearest the requested
parameter sparsities (how papers pick their 30%/40% models) it reports, for both, the
held-out zero-shot accuracy of each task (``acc``), their average, and WikiText-2 perplexity
with 128-token windows. Both trajectories and the dense model are scored on the same
held-out items. ``--max-sparsity`` is a structural ratio; 0.5 gives about 0.45 parameter
sparsity on SmolLM2-135M.

    python benchmarks/bench_objectives.py --quick          # minutes: proves the pipeline, numbers mean little
    python benchmarks/bench_objectives.py                  # the comparison (see --help for the settings)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, table, write_result  # noqa: E402

SHORT = {"boolq": "boolq", "piqa": "piqa", "hellaswag": "hswag", "winogrande": "wino", "arc_easy": "arc-e",
         "arc_challenge": "arc-c", "openbookqa": "obqa"}


def evaluate(loaded, exclusions: dict, args) -> dict:
    from gisp_engine.evaluate import evaluate_task

    suite = evaluate_task(loaded.model, loaded.tokenizer, "cmqa", limit=args.limit, exclusions=exclusions,
                          batch_size=args.eval_batch)
    ppl = evaluate_task(loaded.model, loaded.tokenizer, "wikitext2", seq_len=128, limit=args.ppl_limit,
                        batch_size=args.eval_batch)
    return {"cmqa": suite.to_dict(), "wikitext2": ppl.to_dict()}


def row(label: str, target: str, step, rec, result: dict, tasks) -> list:
    accs = [result["cmqa"]["tasks"][t]["acc"] for t in tasks]
    return [label, target, step, rec.param_sparsity if rec else 0.0, *accs, result["cmqa"]["average_acc"],
            result["wikitext2"]["perplexity"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--max-sparsity", type=float, default=0.5, help="structural ratio at the last step")
    ap.add_argument("--calib-tokens", type=int, default=4096, help="calibration tokens of each objective")
    ap.add_argument("--seq-len", type=int, default=128, help="perplexity objective: tokens per window")
    ap.add_argument("--at", default="0.3,0.4", help="parameter sparsities to report (nearest steps)")
    ap.add_argument("--limit", type=int, default=100, help="held-out items per task (None: all)")
    ap.add_argument("--ppl-limit", type=int, default=200, help="WikiText-2 128-token windows")
    ap.add_argument("--eval-batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="2 steps, 512 calibration tokens, 5 items per task")
    ap.add_argument("--no-cache", action="store_true", help="rebuild trajectories even if cached")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.calib_tokens, args.limit, args.ppl_limit = 2, 512, 5, 5

    from gisp_engine import PruneConfig, apply_step, load_model, prune
    from gisp_engine.tasks import CHOICE_TASKS, calibration_exclusions

    started = time.perf_counter()
    common = dict(model=args.model, steps=args.steps, max_sparsity=args.max_sparsity, seed=args.seed,
                  device=args.device, dtype=args.dtype)
    configs = {
        # the same token budget: num_samples windows of seq_len tokens, or calib_tokens over the tasks
        "perplexity": PruneConfig(objective="perplexity", calib="lambada", seq_len=args.seq_len,
                                  num_samples=max(1, args.calib_tokens // args.seq_len), **common),
        "margin": PruneConfig(objective="margin", tasks="cmqa", calib_tokens=args.calib_tokens,
                              seq_len=args.seq_len, **common),
    }
    trajectories, prune_wall = {}, {}
    for name, config in configs.items():
        t0 = time.perf_counter()
        outcome = prune(config, use_cache=not args.no_cache)
        trajectories[name] = outcome.trajectory
        prune_wall[name] = {"wall_s": time.perf_counter() - t0, "cache_hit": outcome.cache_hit,
                            "loop_wall_s": outcome.trajectory.meta.get("wall_time_s"), "key": outcome.trajectory.key}
        how = "cache hit" if outcome.cache_hit else f"{prune_wall[name]['wall_s']:.0f} s"
        print(f"{name}: trajectory {outcome.trajectory.path} ({how})", flush=True)

    targets = [float(x) for x in args.at.split(",")]
    rows, evals = [], []
    loaded = load_model(args.model, args.device, args.dtype)
    dense = evaluate(loaded, {}, args)
    rows.append(row("dense", "0%", 0, None, dense, CHOICE_TASKS))
    evals.append({"objective": None, "target": 0.0, "step": 0, "param_sparsity": 0.0, **dense})
    for target in targets:
        for name, traj in trajectories.items():
            step = traj.step_nearest_sparsity(min(target, traj.max_param_sparsity))
            loaded = load_model(args.model, args.device, args.dtype)
            apply_step(loaded, traj, step)
            result = evaluate(loaded, calibration_exclusions(traj.meta.get("objective")), args)
            rec = traj.steps[step]
            rows.append(row(name, f"{target:.0%}", step, rec, result, CHOICE_TASKS))
            evals.append({"objective": name, "target": target, "step": step, "param_sparsity": rec.param_sparsity,
                          "structural_ratio": rec.structural_ratio, **result})
            print(f"evaluated {name} at step {step} ({rec.param_sparsity:.3f})", flush=True)

    header = ["objective", "target", "step", "params", *(SHORT[t] for t in CHOICE_TASKS), "avg acc", "wt2 ppl"]
    print(f"\nGISP on {args.model}: {args.steps} steps to structural {args.max_sparsity}, {args.calib_tokens} "
          f"calibration tokens per objective (perplexity: LAMBADA; margin: CMQA pools)")
    print(f"zero-shot acc on the first {args.limit} held-out items per task; WikiText-2 perplexity over "
          f"{dense['wikitext2']['windows']} windows of 128 tokens")
    print(table(rows, header))
    path = write_result("objectives" + ("-quick" if args.quick else ""), {
        "settings": vars(args), "machine": machine(), "trajectories": prune_wall, "results": evals,
        "wall_s": time.perf_counter() - started,
    })
    print(f"\nwritten to {path} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
