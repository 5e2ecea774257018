"""``gisp``: prune, inspect and evaluate from the command line (everything the app can do)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .core import settings
from .core.errors import GispError
from .core.progress import TqdmProgress


def _load_trajectory(ref: str):
    from .pruning.cache import resolve_trajectory

    return resolve_trajectory(ref)


def _emit(args, payload: dict, text: str) -> None:
    print(json.dumps(payload, indent=1, default=float) if args.json else text)


# ---- commands ----------------------------------------------------------------------------
def cmd_prune(args) -> None:
    from .pruning.config import from_arguments
    from .pruning.pruner import prune

    config = from_arguments(args)
    if args.dry_run:
        _dry_run(args, config)
        return
    from .pruning.distributed import session

    # under torchrun (or with --distributed) every rank scores its share; rank 0 alone reports and writes
    with session(args.device, required=args.distributed) as ctx:
        bar = TqdmProgress(enabled=not args.quiet and ctx.is_main)
        try:
            outcome = prune(
                config,
                progress=bar,
                out=args.out,
                use_cache=not args.no_cache,
                resume=args.resume,
                check_memory=not args.force,
            )
        finally:
            bar.close()
    if not ctx.is_main:
        return
    traj = outcome.trajectory
    payload = {"path": str(traj.path), "cache_hit": outcome.cache_hit, **traj.summary()}
    payload["path"] = str(traj.path)
    _emit(args, payload, str(traj.path))


def _dry_run(args, config) -> None:
    """The plan and its estimate, with no weights loaded; under torchrun, as each of its processes would run."""
    import os

    from .pruning.plan_estimate import check_request, dry_run
    from .pruning.pruner import plan

    check_request(config)  # a device or dtype the estimate cannot cover is refused before anything is written
    result = dry_run(plan(config), processes=int(os.environ.get("WORLD_SIZE", "1")))
    _emit(args, result.to_dict(), result.text())


def cmd_info(args) -> None:
    traj = _load_trajectory(args.trajectory)
    questions = [q for q in (args.structure, args.rank_stability or None, args.scores_at) if q is not None]
    if questions:
        from .explore import explain

        if len(questions) > 1:
            raise GispError("--structure, --rank-stability and --scores-at are separate questions: ask one at a time")
        result = (
            explain.structure_history(traj, args.structure)
            if args.structure is not None
            else explain.step_scores(traj, args.scores_at)
            if args.scores_at is not None
            else explain.rank_stability(traj)
        )
        _emit(args, result.to_dict(), result.text())
        return
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
            lines.append(
                f"  layer {i:>2}: {len(layer['heads'])} heads {layer['heads']}, {len(layer['channels'])} channels"
            )
    _emit(args, payload, "\n".join(lines))


def cmd_eval(args) -> None:
    from .evaluation.checks import evaluate_step
    from .evaluation.evaluate import evaluate_task, result_text
    from .model.loading import load_model
    from .pruning.subnetwork import apply_step, recorded_model, resolve_step

    if (args.sparsity is not None or args.step is not None) and not args.trajectory:
        raise GispError("--sparsity/--step need --trajectory")
    traj = _load_trajectory(args.trajectory) if args.trajectory else None
    step = resolve_step(traj, args.sparsity, args.step) if traj else None
    # a trajectory is evaluated on the model it was built from unless --model says otherwise
    model = args.model or (recorded_model(traj) if traj else settings.DEFAULT_MODEL)
    loaded = load_model(model, args.device, args.dtype, args.device_map)
    payload = {"model": model, "task": args.task}
    options = {
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "few_shot": args.few_shot,
        "max_new_tokens": args.max_new_tokens,
        "include_pool": args.all_items,
        "bos": args.bos,
    }
    bar = TqdmProgress(enabled=not args.quiet)
    try:
        if traj is not None:
            # the same remembered evaluation the explorer runs (and draws on its curve); a trajectory's
            # own calibration items are never evaluated on, whatever the step
            apply_step(loaded, traj, step)
            rec = traj.steps[step]
            payload.update(
                trajectory=str(traj.path),
                step=step,
                param_sparsity=rec.param_sparsity,
                structural_ratio=rec.structural_ratio,
            )
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


def _limits(spec: str | None) -> tuple[int | None, tuple[tuple[str, int | None], ...]]:
    """``--limit``: N for every check, or ``task=N`` pairs (``wikitext2=120,arc_easy=100``; ``all`` for no limit)."""
    if spec is None or not str(spec).strip():
        return None, ()

    def number(text: str) -> int | None:
        text = text.strip()
        if text.lower() in ("all", "0", "none"):
            return None
        try:
            return int(text)
        except ValueError:
            raise GispError(
                f"--limit {spec!r}: expected a number or task=N pairs like wikitext2=120,arc_easy=100"
            ) from None

    if "=" not in spec:
        return number(spec), ()
    pairs = []
    for part in spec.split(","):
        task, sep, value = part.partition("=")
        if not sep or not task.strip():
            raise GispError(f"--limit {spec!r}: expected task=N pairs like wikitext2=120,arc_easy=100")
        pairs.append((task.strip(), number(value)))
    return None, tuple(pairs)


def _cost_spec(args):
    """The cost workload of ``gisp sweep``: the flags given over the runtime's own defaults (the app's too)."""
    from .evaluation.cost import CostSpec
    from .evaluation.cost_llamacpp import GGUFCostSpec

    pytorch_only = {"--cost-batch": args.cost_batch, "--export-dtype": args.export_dtype}
    llamacpp_only = {"--outtype": args.outtype, "--uniform": args.uniform or None, "--align": args.align}
    if not args.cost:
        given = [
            flag for flag, v in {"--runtime": args.runtime, **pytorch_only, **llamacpp_only}.items() if v is not None
        ]
        if given:
            raise GispError(f"{', '.join(given)} set{'s' if len(given) == 1 else ''} how cost is measured: add --cost")
        return None
    common = {
        name: value
        for name, value in (
            ("seq_len", args.cost_seq_len),
            ("new_tokens", args.cost_new_tokens),
            ("repeats", args.cost_repeats),
            ("threads", args.cost_threads),
        )
        if value is not None
    }
    if args.runtime == "llamacpp":
        wrong = [flag for flag, v in pytorch_only.items() if v is not None]
        if wrong:
            raise GispError(
                f"{', '.join(wrong)} is PyTorch's: llama.cpp prefills one sequence, and its weight bytes "
                "are the GGUF file's (--outtype)"
            )
        return GGUFCostSpec(
            **common,
            outtype=args.outtype or GGUFCostSpec.outtype,
            layout="uniform" if args.uniform else "per-layer",
            align=args.align,
        )
    wrong = [flag for flag, v in llamacpp_only.items() if v is not None]
    if wrong:
        raise GispError(
            f"{', '.join(wrong)} describe{'s' if len(wrong) == 1 else ''} the GGUF that --runtime llamacpp times"
        )
    pytorch = {
        name: value
        for name, value in (("batch", args.cost_batch), ("export_dtype", args.export_dtype))
        if value is not None
    }
    return CostSpec(**common, **pytorch)


def cmd_sweep(args) -> None:
    from .choose.sweep import SweepRequest, parse_checks, parse_steps, run_sweep
    from .choose.table import sweep_table
    from .model.loading import load_model, resolve_device, resolve_dtype
    from .pruning.subnetwork import recorded_model

    traj = _load_trajectory(args.trajectory)
    cost = _cost_spec(args)
    limit, limits = _limits(args.limit)
    tasks = parse_checks(args.task, allow_none=args.cost)
    unknown = [t for t, _ in limits if t not in tasks]
    if unknown:
        raise GispError(
            f"--limit names {', '.join(unknown)}, which --task does not sweep ({', '.join(tasks) or 'none'})"
        )
    request = SweepRequest(
        tasks=tasks,
        steps=parse_steps(args.steps, traj),
        limit=limit,
        limits=limits,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        cost=cost,
        bos=args.bos,
    )
    model = args.model or recorded_model(traj)
    dtype = str(resolve_dtype(args.dtype, resolve_device(args.device))).removeprefix("torch.")
    bar = TqdmProgress(enabled=not args.quiet)
    try:
        report = run_sweep(
            traj,
            lambda: load_model(model, args.device, args.dtype, args.device_map),
            request,
            bar,
            copy_model=False,
            refresh=args.no_cache,
            dtype=dtype,
        )
    finally:
        bar.close()
    if args.save_in_trajectory:
        from .evaluation.checks import ship_evaluations

        print(f"gisp: results written into {ship_evaluations(traj)}", file=sys.stderr)
    # exactly the points asked for (computed now or remembered with these settings), never another series
    table = sweep_table(traj, report.rows)
    rows = [r for r in table.to_rows() if r["step"] in report.steps]
    speed = [f"{c}{s}" for c in ("prefill_speedup", "decode_speedup") for s in ("", "_low", "_high")]
    columns = [
        c
        for c in (*table.quality, *speed, "memory_ratio", "peak_bytes", "weight_bytes")
        if any(r.get(c) is not None for r in rows)
    ]
    lines = [
        f"sweep of {traj.path}: {report.computed} points computed, {report.remembered} remembered",
        "  ".join(["step", "params", *columns]),
    ]
    for r in rows:
        cells = [f"{r['step']:>4}", f"{r['param_sparsity']:6.1%}"]
        cells += ["-" if r.get(c) is None else f"{r[c]:.4g}" for c in columns]
        lines.append("  ".join(cells))
    lines += [f"{c}: {table.labels[c]}" for c in table.quality if c in columns]
    if table.cost_label:
        lines.append(f"cost: {table.cost_label}; speed-ups: median [lowest, highest] of the repeats' ratios to dense")
    payload = {
        "trajectory": str(traj.path),
        "model": model,
        "request": request.to_dict(),
        "computed": report.computed,
        "remembered": report.remembered,
        "rows": rows,
        "labels": table.labels,
        "cost_label": table.cost_label,
    }
    _emit(args, payload, "\n".join(lines))


def cmd_model_prepare(args) -> None:
    from .model.loading import prepare_embedded_model

    folder = prepare_embedded_model(args.name)
    _emit(args, {"model": args.name, "path": str(folder)}, str(folder))


def cmd_cache_list(args) -> None:
    from .pruning.cache import list_cached

    rows = list_cached()
    text = (
        "\n".join(
            f"{r['key']}  {r['model']}  {r['objective']}  {r['steps']} steps  "
            f"max sparsity {r['max_param_sparsity']:.3f}  {r['created']}"
            for r in rows
        )
        or "(no trajectories in the cache)"
    )
    _emit(args, {"trajectories": rows}, text)


def cmd_cache_rm(args) -> None:
    from .jobs.housekeeping import human_bytes, remove_trajectory

    done = remove_trajectory(args.key)
    _emit(args, {"removed": done.to_dict()}, f"removed trajectory {args.key}: {human_bytes(done.bytes)} freed")


def cmd_jobs_list(args) -> None:
    from .jobs.background import list_jobs

    rows = list_jobs(active_only=args.active)
    lines = [
        f"{j.key}  {j.kind:5}  {j.state:9}  step {j.step}/{j.total}  {j.message or j.error or ''}".rstrip()
        for j in rows
    ]
    _emit(args, {"jobs": [j.to_dict() for j in rows]}, "\n".join(lines) or "no background jobs")


def cmd_jobs_cancel(args) -> None:
    from .jobs.background import cancel

    job = cancel(args.key)
    if job is None:
        raise GispError(f"no background job {args.key!r}: `gisp jobs list` names them")
    _emit(args, {"job": job.to_dict()}, f"{args.key}: {job.state}")


def cmd_cache_prune(args) -> None:
    from .jobs.housekeeping import apply_cleanup, human_bytes, plan_cleanup

    plan = plan_cleanup(finished_jobs=args.jobs, older_than_days=args.older_than)
    if not args.dry_run:
        apply_cleanup(plan)
    verb = "would free" if args.dry_run else "freed"
    lines = [f"{'would remove' if args.dry_run else 'removed'} {p}  ({why})" for p, why in plan.items]
    lines.append(f"{len(plan.items)} entries, {human_bytes(plan.bytes)} {verb}")
    _emit(args, {"dry_run": args.dry_run, **plan.to_dict()}, "\n".join(lines))


def _export_model(args, trajectory):
    """The trajectory's base model, loaded in the dtype to write (the output folder checked first)."""
    from .export.folder import check_out_dir
    from .model.loading import load_model
    from .pruning.subnetwork import recorded_checkpoint_dtype, recorded_model

    check_out_dir(Path(args.out).expanduser())  # before minutes of loading
    model = args.model or recorded_model(trajectory)
    dtype = recorded_checkpoint_dtype(model) if args.dtype == "auto" else args.dtype  # keep a bf16 checkpoint bf16
    return load_model(model, args.device, dtype)


def cmd_export(args) -> None:
    from .export.elastic import export_elastic
    from .export.hf import export_subnetwork
    from .pruning.subnetwork import resolve_step

    compensation = False if args.no_bias_compensation else None
    if args.all_steps and (args.sparsity is not None or args.step is not None or args.uniform):
        raise GispError("--all-steps writes every step: give no --sparsity, --step or --uniform with it")
    if args.all_steps and args.align is not None:
        raise GispError("--align rounds one point: give --sparsity or --step, or prune with --align for aligned steps")
    if not args.all_steps and args.sparsity is None and args.step is None:
        raise GispError("give --sparsity S (parameter sparsity) or --step K, or --all-steps")
    if args.format == "gguf" and args.all_steps:
        raise GispError("--format gguf writes one step: give --sparsity or --step instead of --all-steps")
    if args.outtype is not None and args.format != "gguf":
        raise GispError("--outtype is the GGUF file's type: give it with --format gguf")
    trajectory = _load_trajectory(args.trajectory)
    step = None if args.all_steps else resolve_step(trajectory, args.sparsity, args.step)
    if args.format == "gguf":  # what cannot be written is refused before minutes of loading
        from .export.gguf import DEFAULT_OUTTYPE, check_request
        from .pruning.subnetwork import compensates

        args.outtype = args.outtype or DEFAULT_OUTTYPE
        check_request(
            trajectory.meta.get("model", {}).get("family", ""),
            args.outtype,
            args.uniform,
            compensates(trajectory, compensation),
        )
    if args.align is not None:  # before minutes of loading
        from .pruning.methods import check_align

        check_align(args.align, trajectory.geometry.intermediate_size)
    loaded = _export_model(args, trajectory)
    bar = TqdmProgress(enabled=not args.quiet)
    try:
        if args.all_steps:
            result = export_elastic(loaded, trajectory, args.out, progress=bar, bias_compensation=compensation)
        elif args.format == "gguf":
            from .export.gguf import export_gguf

            result = export_gguf(
                loaded,
                trajectory,
                step,
                args.out,
                uniform=args.uniform,
                outtype=args.outtype,
                progress=bar,
                bias_compensation=compensation,
                align=args.align,
            )
        else:
            result = export_subnetwork(
                loaded,
                trajectory,
                step,
                args.out,
                uniform=args.uniform,
                progress=bar,
                bias_compensation=compensation,
                align=args.align,
            )
    finally:
        bar.close()
    s = result.summary()
    if args.format == "gguf":
        padded = f", {s['padding_overhead']:.1%} more weights for equal GQA groups" if s["padding_overhead"] else ""
        what = (
            f"GGUF ({s['layout']}, llama.cpp arch {s['arch']}, {s['outtype']}) of step {s['step']}: parameter "
            f"sparsity {s['param_sparsity']:.4f}{padded}, {s['file_bytes'] / 2**20:.1f} MiB"
        )
    elif args.all_steps:
        what = (
            f"elastic export of steps 0..{s['last_step']} (parameter sparsity up to "
            f"{s['max_param_sparsity']:.4f}) in one folder, {s['weights_bytes'] / 2**20:.1f} MiB of weights"
        )
    else:
        what = (
            f"{s['kind']} export of step {s['step']}: parameter sparsity {s['param_sparsity']:.4f} "
            f"(trajectory point {s['trajectory_param_sparsity']:.4f}), {s['param_count']:,} parameters"
        )
    _emit(args, s, f"{result.folder}\n{what}\nloads with {s['loads_with']}")


# ---- parser ------------------------------------------------------------------------------
def _bos_arg(p: argparse.ArgumentParser, what: str) -> None:
    from .data.text import BOS_POLICIES, BOS_POLICY_HELP

    p.add_argument("--bos", default="auto", choices=BOS_POLICIES, help=f"BOS token of the {what}. {BOS_POLICY_HELP}")


def _device_args(p: argparse.ArgumentParser) -> None:
    """--device, --dtype, --device-map: declared with PruneConfig's settings."""
    from .pruning.config import add_arguments

    add_arguments(p, only=("device", "dtype", "device_map"))


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose refusals are one line on stderr and exit code 2, as every other error of the
    command (argparse's own print the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``gisp`` command and its subcommands. ``gisp prune``'s settings are ``PruneConfig``'s own declarations
    (``pruning.config.add_arguments``); the other flags (what to do with a run, where to print) are declared here."""
    from .pruning.config import add_arguments

    parser = _Parser(prog="gisp", description="Global Iterative Structured Pruning of causal LMs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="build (or fetch from the cache) a pruning trajectory")
    add_arguments(p)  # every setting of PruneConfig, from its declaration
    p.add_argument("--no-cache", action="store_true", help="recompute even if the cache has this trajectory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last completed step")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel scoring over the processes torchrun started (automatic under torchrun; "
        "this flag refuses to run without it)",
    )
    p.add_argument("--out", default=None, help="also write the trajectory to this folder")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan (settings, cache key, structures, micro-batches, estimated peak memory and "
        "time per step) without loading weights or running anything",
    )
    p.add_argument(
        "--force", action="store_true", help="run even when the estimated peak memory exceeds the device's free memory"
    )
    p.add_argument("--json", action="store_true", help='print a JSON summary (with "path")')
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("info", help="steps of a trajectory, and the kept structures at a sparsity")
    p.add_argument("trajectory", help="a trajectory folder or cache key")
    p.add_argument("--at", type=float, default=None, help="parameter sparsity: kept heads/channels per layer")
    p.add_argument(
        "--structure",
        default=None,
        metavar="LAYER:KIND:INDEX",
        help="one structure's score, rank among the remaining ones and the cut line at every step "
        "(e.g. 25:head:2, 12:channel:801)",
    )
    p.add_argument(
        "--rank-stability",
        action="store_true",
        help="per step: Spearman's correlation of its scores with the dense ones, and the Jaccard index of "
        "what was removed with what the dense ranking alone would have removed",
    )
    p.add_argument(
        "--scores-at",
        type=int,
        default=None,
        metavar="STEP",
        help="the scores step STEP (1..T) ranked: per layer and kind, count, removed, quartiles, the cut line",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    from .evaluation.evaluate import TASKS as EVAL_TASKS
    from .evaluation.evaluate import task_argument

    p = sub.add_parser("eval", help="evaluate the dense model or a point of a trajectory")
    p.add_argument(
        "--model",
        default=None,
        help=f"default: the model the --trajectory was built from, else {settings.DEFAULT_MODEL}",
    )
    p.add_argument("--trajectory", default=None)
    p.add_argument("--sparsity", type=float, default=None, help="parameter sparsity (the last step at or below it)")
    p.add_argument("--step", type=int, default=None, help="a step of the trajectory instead of a sparsity")
    p.add_argument(
        "--task",
        default="wikitext2",
        metavar="TASK",
        type=task_argument,
        help=f"{', '.join(EVAL_TASKS)}: wikitext2 (perplexity), a decision task or cmqa (all seven: zero-shot "
        "accuracy), gsm8k (exact match), or a custom task file path.jsonl (see README)",
    )
    p.add_argument(
        "--seq-len", type=int, default=128, help="wikitext2 window length (128: GISP/LLM-Pruner; 2048: Wanda/SliceGPT)"
    )
    _bos_arg(p, "wikitext2 windows")
    p.add_argument(
        "--limit", type=int, default=None, help="only the first N windows (wikitext2) or held-out items per task"
    )
    p.add_argument("--few-shot", type=int, default=5, help="gsm8k: solved train problems before each question")
    p.add_argument("--max-new-tokens", type=int, default=256, help="gsm8k: generation length limit")
    p.add_argument("--no-cache", action="store_true", help="evaluate again even if this evaluation is remembered")
    p.add_argument(
        "--all-items",
        action="store_true",
        help="also evaluate the reserved calibration pools (a trajectory's own calibration items stay out)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="windows, options or problems per forward pass")
    _device_args(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "sweep", help="evaluate every step of a trajectory (quality, and cost with --cost), remembered per point"
    )
    p.add_argument("--trajectory", required=True, help="a trajectory folder or cache key")
    p.add_argument(
        "--task",
        default="wikitext2",
        help="comma-separated checks: wikitext2, a decision task, cmqa, gsm8k, a .jsonl task file; "
        "none with --cost: cost only",
    )
    p.add_argument("--steps", default="all", help="'all' or step numbers like 0,2,4")
    p.add_argument(
        "--limit",
        default=None,
        help="only the first N windows (wikitext2) or items per task; or per check: wikitext2=120,arc_easy=100",
    )
    p.add_argument("--seq-len", type=int, default=128, help="wikitext2 window length")
    _bos_arg(p, "wikitext2 windows")
    p.add_argument("--batch-size", type=int, default=8, help="windows or options per forward pass")
    p.add_argument("--model", default=None, help="the dense model (default: the one the trajectory records)")
    from .evaluation.cost import CostSpec
    from .evaluation.cost_llamacpp import GGUFCostSpec

    torch_spec, gguf_spec = CostSpec(), GGUFCostSpec()  # the app's defaults too
    p.add_argument(
        "--cost",
        action="store_true",
        help="also measure prefill and decode speed, peak memory and weight bytes of each step",
    )
    p.add_argument(
        "--runtime",
        choices=["pytorch", "llamacpp"],
        default=None,
        help="cost: where it is measured: pytorch (default; the sliced model) or llamacpp (each step's GGUF "
        "in llama.cpp, against the dense GGUF written the same way)",
    )
    p.add_argument(
        "--cost-batch",
        type=int,
        default=None,
        help=f"cost: prefill batch (PyTorch: {torch_spec.batch}; llama.cpp prefills one sequence)",
    )
    p.add_argument(
        "--cost-seq-len",
        type=int,
        default=None,
        help=f"cost: prefill length (PyTorch {torch_spec.seq_len}, llama.cpp {gguf_spec.seq_len})",
    )
    p.add_argument(
        "--cost-new-tokens",
        type=int,
        default=None,
        help=f"cost: decoded tokens at batch 1 (PyTorch {torch_spec.new_tokens}, llama.cpp {gguf_spec.new_tokens})",
    )
    p.add_argument(
        "--cost-repeats",
        type=int,
        default=None,
        help="cost: timings per step, interleaved with dense (median, and the spread of their ratios; "
        f"PyTorch {torch_spec.repeats}, llama.cpp {gguf_spec.repeats})",
    )
    p.add_argument(
        "--cost-threads",
        type=int,
        default=None,
        help="cost: threads (default: every core this process may use; the app uses the same default)",
    )
    p.add_argument(
        "--export-dtype",
        default=None,
        help="cost (PyTorch): dtype of the weight bytes (auto, the default: the checkpoint's)",
    )
    p.add_argument(
        "--outtype",
        default=None,
        help=f"cost (llama.cpp): the GGUF type timed (default {gguf_spec.outtype}; f32, bf16, q8_0, q4_k_m, ...)",
    )
    p.add_argument(
        "--uniform",
        action="store_true",
        help="cost (llama.cpp): time the uniform GGUF (the family's stock arch) instead of the per-layer one",
    )
    p.add_argument(
        "--align",
        type=int,
        default=None,
        help="cost (llama.cpp): every layer's MLP width rounded to a multiple of N in the GGUFs timed",
    )
    p.add_argument("--no-cache", action="store_true", help="compute every point again")
    p.add_argument(
        "--save-in-trajectory",
        action="store_true",
        help="also write every remembered result into the trajectory's folder (evaluations.json), "
        "as the repository's examples carry theirs",
    )
    _device_args(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("model", help="the embedded default model")
    msub = p.add_subparsers(dest="model_command", required=True)
    mp = msub.add_parser("prepare", help="convert an embedded model from GGUF into the cache (once)")
    mp.add_argument(
        "name",
        nargs="?",
        default=settings.DEFAULT_MODEL,
        help=f"{' or '.join(settings.EMBEDDED_MODELS)} (default {settings.DEFAULT_MODEL})",
    )
    mp.add_argument("--json", action="store_true")
    mp.set_defaults(func=cmd_model_prepare)

    p = sub.add_parser("cache", help="what the cache holds")
    csub = p.add_subparsers(dest="cache_command", required=True)
    cp = csub.add_parser("list", help="complete trajectories in the cache")
    cp.add_argument("--json", action="store_true")
    cp.set_defaults(func=cmd_cache_list)
    cp = csub.add_parser("rm", help="remove one trajectory with its checkpoint and remembered evaluations")
    cp.add_argument("key", help="the trajectory's cache key (`gisp cache list`)")
    cp.add_argument("--json", action="store_true")
    cp.set_defaults(func=cmd_cache_rm)
    cp = csub.add_parser(
        "prune", help="remove finished background jobs, old trajectories, uploads and exports, and unfinished writes"
    )
    cp.add_argument("--jobs", action="store_true", help="finished (done, failed, cancelled) background jobs")
    cp.add_argument(
        "--older-than",
        type=float,
        default=None,
        metavar="DAYS",
        help="trajectories, uploads and exports (and, with --jobs, jobs) older than this many days",
    )
    cp.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    cp.add_argument("--json", action="store_true")
    cp.set_defaults(func=cmd_cache_prune)

    p = sub.add_parser("jobs", help="background runs and sweeps (what the app starts)")
    jsub = p.add_subparsers(dest="jobs_command", required=True)
    jp = jsub.add_parser("list", help="every job, newest first: key, kind, state, progress")
    jp.add_argument("--active", action="store_true", help="only those starting or running")
    jp.add_argument("--json", action="store_true")
    jp.set_defaults(func=cmd_jobs_list)
    jp = jsub.add_parser("cancel", help="stop a running job (it resumes from its last step when asked again)")
    jp.add_argument("key", help="the job's key (`gisp jobs list`)")
    jp.add_argument("--json", action="store_true")
    jp.set_defaults(func=cmd_jobs_cancel)

    _export_parser(sub)
    return parser


def _export_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a point of a trajectory as a smaller model folder")
    p.add_argument(
        "--model", default=None, help="the base model (default: the one the trajectory records it was built from)"
    )
    p.add_argument("--trajectory", required=True, help="a trajectory folder or cache key")
    p.add_argument("--sparsity", type=float, default=None, help="parameter sparsity (the last step at or below it)")
    p.add_argument("--step", type=int, default=None, help="a step of the trajectory instead of a sparsity")
    p.add_argument("--out", required=True, help="folder to write (replaced if it holds an earlier export)")
    p.add_argument(
        "--uniform",
        action="store_true",
        help="same width in every layer: loads with stock transformers code (gguf: the family's stock "
        "llama.cpp arch), differs from the trajectory",
    )
    p.add_argument(
        "--all-steps",
        action="store_true",
        help="every step in one folder (elastic): load any step with gisp_step=T or load_pruned(DIR, step=T)",
    )
    p.add_argument(
        "--align",
        type=int,
        default=None,
        metavar="N",
        help="round every layer's MLP width to a multiple of N (nearest, at least N), keeping the channels "
        "the trajectory removed last",
    )
    p.add_argument(
        "--no-bias-compensation",
        action="store_true",
        help="FLAP trajectories: leave out FLAP's bias compensation (written by default, as published)",
    )
    p.add_argument(
        "--format",
        default="hf",
        choices=("hf", "gguf"),
        help="hf: a transformers folder (default); gguf: one GGUF file for llama.cpp and Ollama "
        "(per-layer as llama.cpp's deci: Llama, Mistral, Qwen2; --uniform: the family's stock arch)",
    )
    p.add_argument(
        "--outtype",
        default=None,
        help="--format gguf: f32, f16 (default), bf16, q8_0, or a llama.cpp quantization "
        "(q4_k_m, q5_k_m, q6_k, ...; needs llama-cpp-python)",
    )
    p.add_argument("--device", default="cpu", help="where to slice: cpu (default), cuda[:N], auto")
    p.add_argument(
        "--dtype",
        default="auto",
        help="dtype of the written weights (gguf: of the model sliced; --outtype sets the file's): auto "
        "(the base checkpoint's own), float32, bfloat16, float16",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_export)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a flag refused in one line
        return exc.code if isinstance(exc.code, int) else 2
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
