"""``gisp``: prune, inspect and evaluate from the command line (everything the app can do)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import settings
from .errors import GispError
from .progress import ProgressEvent


class TqdmProgress:
    """Renders engine progress events as tqdm bars on stderr.

    Pruning shows one bar over the steps (with loss and sparsity beside it, and tqdm's
    estimate of the time left) and, when a step has several micro-batches, a bar inside it.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bars: dict[str, object] = {}

    def _bar(self, key: str, total: int, desc: str, position: int, leave: bool):
        from tqdm import tqdm

        bar = self.bars.get(key)
        if bar is None or bar.total != total or bar.desc != desc:
            if bar is not None:
                bar.close()
            bar = tqdm(total=total, desc=desc, position=position, leave=leave, file=sys.stderr, dynamic_ncols=True)
            self.bars[key] = bar
        return bar

    def __call__(self, event: ProgressEvent) -> None:
        if not self.enabled:
            return
        if event.phase in ("prepare", "final"):
            if event.message and event.done == 0:
                print(f"gisp: {event.message}", file=sys.stderr)
            return
        if event.phase == "step":
            bar = self._bar("step", event.total, "pruning steps", 0, True)
            if event.info:
                bar.set_postfix(event.info, refresh=False)
            bar.n = event.done
            bar.refresh()
            return
        if event.phase == "score" and event.total <= 1:
            return  # one micro-batch: the step bar says it all
        inner = "score" if event.phase == "score" else "eval"
        desc = f"step {event.step} batches" if event.phase == "score" else event.message or event.phase
        bar = self._bar(inner, event.total, desc, 1 if event.phase == "score" else 0, event.phase != "score")
        bar.n = event.done
        bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def _load_trajectory(ref: str):
    from . import cache
    from .trajectory import Trajectory

    path = Path(ref).expanduser()
    if path.exists():
        return Trajectory.load(path)
    if cache.path_for(ref).exists():
        return Trajectory.load(cache.path_for(ref))
    raise GispError(f"trajectory {ref!r} not found (give a folder or a cache key; `gisp cache list` shows them)")


def _emit(args, payload: dict, text: str) -> None:
    print(json.dumps(payload, indent=1, default=float) if args.json else text)


# ---- commands ----------------------------------------------------------------------------
def cmd_prune(args) -> None:
    from .config import PruneConfig
    from .pruner import prune

    config = PruneConfig(
        model=args.model,
        method=args.method,
        objective=args.objective,
        calib=args.calib,
        tasks=args.tasks,
        calib_tokens=args.calib_tokens,
        num_samples=args.num_samples,
        seq_len=args.seq_len,
        steps=args.steps,
        max_sparsity=args.max_sparsity,
        schedule=args.schedule,
        gqa=args.gqa,
        normalization=args.normalization,
        protect_first=args.protect_first,
        protect_last=args.protect_last,
        seed=args.seed,
        batch_size=args.batch_size,
        shrink=not args.no_shrink,
        save_scores=args.save_scores,
        device=args.device,
        dtype=args.dtype,
        device_map=args.device_map,
    )
    bar = TqdmProgress(enabled=not args.quiet)
    try:
        outcome = prune(config, progress=bar, out=args.out, use_cache=not args.no_cache, resume=args.resume)
    finally:
        bar.close()
    traj = outcome.trajectory
    payload = {"path": str(traj.path), "cache_hit": outcome.cache_hit, **traj.summary()}
    payload["path"] = str(traj.path)
    _emit(args, payload, str(traj.path))


def cmd_info(args) -> None:
    traj = _load_trajectory(args.trajectory)
    payload = traj.summary()
    lines = [
        f"trajectory {traj.path}",
        f"model {payload['model']}  objective {payload['objective']}  gqa {traj.gqa}  steps {traj.num_steps}",
        f"{'step':>4}  {'struct':>7}  {'params':>7}  {'loss':>9}",
    ]
    lines += [f"{r.step:>4}  {r.structural_ratio:7.4f}  {r.param_sparsity:7.4f}  {r.loss:9.4f}" for r in traj.steps]
    if args.at is not None:
        kept = traj.kept(traj.step_at_sparsity(args.at))
        payload["at"] = {"requested_sparsity": args.at, **kept}
        lines.append(
            f"at {args.at:g}: step {kept['step']}, parameter sparsity {kept['param_sparsity']:.4f}, "
            f"structural ratio {kept['structural_ratio']:.4f}"
        )
        for i, layer in enumerate(kept["layers"]):
            lines.append(f"  layer {i:>2}: {len(layer['heads'])} heads {layer['heads']}, {len(layer['channels'])} channels")
    _emit(args, payload, "\n".join(lines))


def cmd_eval(args) -> None:
    from .checks import evaluate_step
    from .evaluate import evaluate_task, result_text
    from .models import load_model
    from .subnetwork import apply_step, resolve_step

    if (args.sparsity is not None or args.step is not None) and not args.trajectory:
        raise GispError("--sparsity/--step need --trajectory")
    traj = _load_trajectory(args.trajectory) if args.trajectory else None
    step = resolve_step(traj, args.sparsity, args.step) if traj else None
    loaded = load_model(args.model, args.device, args.dtype, args.device_map)
    payload = {"model": args.model, "task": args.task}
    options = {"seq_len": args.seq_len, "batch_size": args.batch_size, "few_shot": args.few_shot,
               "max_new_tokens": args.max_new_tokens, "include_pool": args.all_items}
    bar = TqdmProgress(enabled=not args.quiet)
    try:
        if traj is not None:
            # the same remembered evaluation the explorer runs (and draws on its curve); a trajectory's
            # own calibration items are never evaluated on, whatever the step
            apply_step(loaded, traj, step)
            rec = traj.steps[step]
            payload.update(trajectory=str(traj.path), step=step, param_sparsity=rec.param_sparsity,
                           structural_ratio=rec.structural_ratio)
            row = evaluate_step(loaded, traj, step, args.task, args.limit, options, bar, refresh=args.no_cache)
            payload.update(row["details"], cached=row["cached"])
            text = f"{row['label']}: {row['value']:.4f}" + (" (remembered)" if row["cached"] else "")
        else:
            payload.update(step=None, param_sparsity=0.0, structural_ratio=0.0)
            result = evaluate_task(loaded.model, loaded.tokenizer, args.task, limit=args.limit, progress=bar, **options)
            payload.update(result.to_dict())
            text = result_text(result)
    finally:
        bar.close()
    _emit(args, payload, f"{text}\nat parameter sparsity {payload['param_sparsity']:.4f}")


def cmd_model_prepare(args) -> None:
    from .models import prepare_embedded_model

    folder = prepare_embedded_model()
    _emit(args, {"model": settings.DEFAULT_MODEL, "path": str(folder)}, str(folder))


def cmd_cache_list(args) -> None:
    from .cache import list_cached

    rows = list_cached()
    text = "\n".join(
        f"{r['key']}  {r['model']}  {r['objective']}  {r['steps']} steps  max sparsity {r['max_param_sparsity']:.3f}  {r['created']}"
        for r in rows
    ) or "(no trajectories in the cache)"
    _emit(args, {"trajectories": rows}, text)


# ---- parser ------------------------------------------------------------------------------
def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu, cuda[:N]")
    p.add_argument("--dtype", default="auto", help="auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16, float16")
    p.add_argument("--device-map", default=None, help="'auto' to spread a large model over GPUs (accelerate)")


def build_parser() -> argparse.ArgumentParser:
    from .baselines import METHODS
    from .config import SCHEDULES, PruneConfig
    from .objectives import OBJECTIVES
    from .structures import GQA_POLICIES, NORMALIZATIONS

    d = PruneConfig()
    parser = argparse.ArgumentParser(prog="gisp", description="Global Iterative Structured Pruning of causal LMs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="build (or fetch from the cache) a pruning trajectory")
    p.add_argument("--model", default=d.model, help=f"{settings.DEFAULT_MODEL} (embedded), a folder, or a hub id")
    p.add_argument("--method", default=d.method, choices=METHODS,
                   help="gisp (iterative); baselines rank once: gisp-oneshot, llm-pruner, magnitude, random, wanda-sp, flap")
    p.add_argument("--objective", default=d.objective, choices=sorted(OBJECTIVES))
    p.add_argument("--calib", default=d.calib, help="lambada (offline default), c4, wikitext2, a file, or hf:DATASET[:CONFIG[:SPLIT[:FIELD]]]")
    p.add_argument("--tasks", default=d.tasks, help="margin objective: boolq,piqa,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa or cmqa (all)")
    p.add_argument("--calib-tokens", type=int, default=None, help="token budget of task objectives (default num-samples x seq-len)")
    p.add_argument("--num-samples", type=int, default=d.num_samples, help="calibration sequences")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help="tokens per calibration sequence")
    p.add_argument("--steps", type=int, default=d.steps, help="pruning steps (1 = one-shot)")
    p.add_argument("--max-sparsity", type=float, default=d.max_sparsity, help="structural ratio reached at the last step")
    p.add_argument("--schedule", default=d.schedule, choices=SCHEDULES)
    p.add_argument("--gqa", default=d.gqa, choices=GQA_POLICIES, help="query: query heads (paper); kv-group: KV head + its queries")
    p.add_argument("--normalization", default=d.normalization, choices=NORMALIZATIONS)
    p.add_argument("--protect-first", type=int, default=None, help="layers at the start never pruned (default int(0.1*L))")
    p.add_argument("--protect-last", type=int, default=d.protect_last, help="layers at the end never pruned")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--batch-size", type=int, default=None, help="sequences per micro-batch (default by device)")
    p.add_argument("--no-shrink", action="store_true", help="mask instead of slicing the working model between steps")
    p.add_argument("--save-scores", action="store_true", help="store every step's scores in the trajectory")
    p.add_argument("--no-cache", action="store_true", help="recompute even if the cache has this trajectory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last completed step")
    p.add_argument("--out", default=None, help="also write the trajectory to this folder")
    _device_args(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary (with \"path\")")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("info", help="steps of a trajectory, and the kept structures at a sparsity")
    p.add_argument("trajectory", help="a trajectory folder or cache key")
    p.add_argument("--at", type=float, default=None, help="parameter sparsity: kept heads/channels per layer")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    from .evaluate import TASKS as EVAL_TASKS

    p = sub.add_parser("eval", help="evaluate the dense model or a point of a trajectory")
    p.add_argument("--model", default=settings.DEFAULT_MODEL)
    p.add_argument("--trajectory", default=None)
    p.add_argument("--sparsity", type=float, default=None, help="parameter sparsity (the last step at or below it)")
    p.add_argument("--step", type=int, default=None, help="a step of the trajectory instead of a sparsity")
    p.add_argument("--task", default="wikitext2", choices=EVAL_TASKS,
                   help="wikitext2 (perplexity), a decision task or cmqa (all seven: zero-shot accuracy), gsm8k (exact match)")
    p.add_argument("--seq-len", type=int, default=128, help="wikitext2 window length (128: GISP/LLM-Pruner; 2048: Wanda/SliceGPT)")
    p.add_argument("--limit", type=int, default=None, help="only the first N windows (wikitext2) or held-out items per task")
    p.add_argument("--few-shot", type=int, default=5, help="gsm8k: solved train problems before each question")
    p.add_argument("--max-new-tokens", type=int, default=256, help="gsm8k: generation length limit")
    p.add_argument("--no-cache", action="store_true", help="evaluate again even if this evaluation is remembered")
    p.add_argument("--all-items", action="store_true",
                   help="also evaluate the reserved calibration pools (a trajectory's own calibration items stay out)")
    p.add_argument("--batch-size", type=int, default=8, help="windows, options or problems per forward pass")
    _device_args(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("model", help="the embedded default model")
    msub = p.add_subparsers(dest="model_command", required=True)
    mp = msub.add_parser("prepare", help=f"convert {settings.DEFAULT_MODEL} from GGUF into the cache (once)")
    mp.add_argument("--json", action="store_true")
    mp.set_defaults(func=cmd_model_prepare)

    p = sub.add_parser("cache", help="what the cache holds")
    csub = p.add_subparsers(dest="cache_command", required=True)
    cp = csub.add_parser("list", help="complete trajectories in the cache")
    cp.add_argument("--json", action="store_true")
    cp.set_defaults(func=cmd_cache_list)

    # extra commands: each module adds its own subparser (one line per module below)
    __import__("gisp_engine.export", fromlist=["register_cli"]).register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except GispError as exc:
        print(f"gisp: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("gisp: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
