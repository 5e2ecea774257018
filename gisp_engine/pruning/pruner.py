"""The GISP loop: score, rank globally, remove a little, repeat on the pruned model.

    for t in 1..T:
        ḡ  = mean gradient of the objective on the current model
        S  = Σ|W ⊙ ḡ| per head and channel, divided by its block's constant
        remove the lowest-ranked unprotected structures until the structural ratio is r_t
        (--align N: then round every cut layer's MLP channel count to a multiple of N)

Nothing removed comes back, so the result is one removal step per structure: a chain
of nested subnetworks. Between steps the working model is sliced physically (or only
masked, ``shrink=False``); both give the same scores and the same trajectory.

The loop runs every method the same way: it asks the method (``gisp_engine.pruning.methods``) for
scores, once on the dense model or at every step (``rescores``), and lets the method's
selection pick the step's removals. It never asks which method it runs.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import platform
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..core.errors import GispError
from ..core.fsutil import atomic_write_json, staging_dir
from ..core.progress import ProgressCallback, ProgressEvent, null_progress
from ..core.settings import ENGINE_VERSION
from ..model.loading import LoadedModel, load_config, load_model, resolve_device, resolve_dtype, weights_sha256
from ..model.structures import StructureSpace
from ..model.surgery import apply_keep, full_layout
from . import cache, distributed, methods, plan_estimate
from .config import PruneConfig, target_ratios
from .importance import objective_value
from .objectives import Objective, objective_spec
from .trajectory import StepRecord, Trajectory


@dataclass
class PruneOutcome:
    trajectory: Trajectory
    cache_hit: bool

    @property
    def path(self) -> Path:
        return self.trajectory.path


@dataclass
class PruningPlan:
    """Everything fixed before any weight is loaded: the space, protection and the request key."""

    config: PruneConfig
    space: StructureSpace
    protect_first: int
    protected_layers: list[int]
    targets: list[int]  # structures removed in total after each step 1..T
    request: dict
    key: str


def plan(config: PruneConfig) -> PruningPlan:
    """Validate the settings against the model's config and compute the cache key (no weights loaded)."""
    config.validate()
    folder, hf_config, adapter = load_config(config.model)
    geometry = adapter.geometry(hf_config)
    max_len = int(getattr(hf_config, "max_position_embeddings", 0) or 0)
    if max_len and config.seq_len > max_len:
        raise GispError(f"--seq-len {config.seq_len} is longer than the model's context ({max_len} tokens)")
    space = StructureSpace(geometry, config.gqa)
    protect_first = config.resolved_protect_first(geometry.num_layers)
    protected_layers = space.protected_layers(protect_first, config.protect_last)
    prunable = int((~space.protected_mask(protect_first, config.protect_last)).sum())
    if config.align is not None:
        methods.check_align(config.align, geometry.intermediate_size)
    targets = [round(r * space.size) for r in target_ratios(config.schedule, config.max_sparsity, config.steps)]
    if targets[-1] > prunable:
        raise GispError(
            f"--max-sparsity {config.max_sparsity} needs {targets[-1]} of {space.size} structures removed, but only "
            f"{prunable} are outside the protected layers {protected_layers}: lower it to at most "
            f"{prunable / space.size:.3f} or protect fewer layers"
        )
    request = {
        "engine": ENGINE_VERSION,
        "method": config.method,
        "model_sha256": weights_sha256(folder),
        "model_type": hf_config.model_type,
        "objective": objective_spec(config.objective).identity(config, adapter.family),
        "steps": config.steps,
        "max_sparsity": config.max_sparsity,
        "schedule": config.schedule,
        "gqa": config.gqa,
        "normalization": config.normalization,
        "protect_first": protect_first,
        "protect_last": config.protect_last,
        "dtype": str(resolve_dtype(config.dtype, resolve_device(config.device))).removeprefix("torch."),
        "save_scores": config.save_scores,
    }
    revision = methods.get(config.method).revision
    if revision is not None:  # a method whose results changed: earlier cache entries are not reused
        request["method_revision"] = revision
    if (config.align or 1) > 1:  # in the key only when it rounds: unaligned keys stay as they were
        request["align"] = config.align
    return PruningPlan(config, space, protect_first, protected_layers, targets, request, cache.request_key(request))


def prune(
    config: PruneConfig,
    progress: ProgressCallback = null_progress,
    out: Path | str | None = None,
    use_cache: bool = True,
    resume: bool = False,
    check_memory: bool = True,
) -> PruneOutcome:
    """Run (or fetch from the cache) the GISP trajectory that ``config`` asks for.

    After every step the loop's state is checkpointed (atomically) beside the cache entry;
    with ``resume`` an interrupted run continues from its last completed step and gives the
    same trajectory as an uninterrupted one. Without it, a stale checkpoint is discarded.
    With ``check_memory`` a run whose estimated peak memory exceeds the device's free memory is refused
    before any weight is loaded (``plan_estimate``); ``gisp prune --force`` turns it off.
    """
    the_plan = plan(config)
    ctx = distributed.context()
    distributed.check_device_map(config.device_map, ctx)
    # under torch.distributed only rank 0 reads and writes the cache and takes the lock; the others
    # follow its decisions (broadcast), so a cache on rank 0's machine alone is enough
    if use_cache:
        hit = distributed.broadcast_object(cache.lookup(the_plan.key) if ctx.is_main else None)
        if hit is not None:
            return PruneOutcome(_copy_out(hit, out) if ctx.is_main else hit, cache_hit=True)
    with cache.locked(the_plan.key) if ctx.is_main else contextlib.nullcontext():
        if use_cache:  # another process may have finished it while we waited for the lock
            hit = distributed.broadcast_object(cache.lookup(the_plan.key) if ctx.is_main else None)
            if hit is not None:
                return PruneOutcome(_copy_out(hit, out) if ctx.is_main else hit, cache_hit=True)
        if check_memory:
            plan_estimate.refuse_if_too_big(the_plan)
        loaded, objective = _load(config, progress)
        if ctx.active and len(objective.batches()) < ctx.world_size:
            progress(
                ProgressEvent(
                    "prepare",
                    0,
                    1,
                    message=(
                        f"only {len(objective.batches())} micro-batches for {ctx.world_size} processes: "
                        "some ranks idle "
                        "(lower --batch-size to use them all)"
                    ),
                )
            )
        progress(ProgressEvent("prepare", 1, 1, message="ready"))
        checkpoint = cache.partial_path(the_plan.key) if ctx.is_main else None
        try:
            trajectory = run_gisp(loaded, the_plan, objective, progress, checkpoint=checkpoint, resume=resume)
        except torch.OutOfMemoryError:
            raise GispError(
                f"out of memory on {loaded.device} while pruning {config.model}: lower --batch-size "
                f"(now {config.resolved_batch_size(loaded.device)}) or --seq-len, use --dtype bfloat16, "
                "or spread the model with --device-map auto; --resume continues from the last step"
            ) from None
        if not ctx.is_main:
            return PruneOutcome(trajectory, cache_hit=False)
        trajectory.save(cache.path_for(the_plan.key))
        plan_estimate.record_throughput(
            trajectory,
            sum(int(b["input_ids"].numel()) for b in objective.batches()),
            methods.get(config.method).uses_gradients,
        )
        shutil.rmtree(checkpoint, ignore_errors=True)
    return PruneOutcome(_copy_out(trajectory, out), cache_hit=False)


def rescore_along(
    trajectory: Trajectory,
    progress: ProgressCallback = null_progress,
    device: str | None = None,
    dtype: str | None = None,
) -> Trajectory:
    """Every step's scores measured along ``trajectory``'s own removal order, with its settings (not cached).

    For a trajectory saved without scores whose run can no longer be repeated bit for bit (an older engine's
    arithmetic can pick other near-ties, and an iterative run then drifts): the result removes exactly what
    ``trajectory`` removed, step by step, and keeps the scores each step measured on the model it had;
    ``meta["followed"]["agreement"]`` says per step how much of that removal the method would have chosen itself.
    """
    where = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    settings = {k: v for k, v in trajectory.meta["settings"].items() if k not in where}
    config = PruneConfig.from_settings({**settings, "save_scores": True}, **where)
    loaded, objective = _load(config, progress)
    progress(ProgressEvent("prepare", 1, 1, message="ready"))
    return run_gisp(loaded, plan(config), objective, progress, follow=trajectory.removal_step)


def _load(config: PruneConfig, progress: ProgressCallback) -> tuple[LoadedModel, Objective]:
    """The model a run prunes and its objective, said as it goes."""
    progress(ProgressEvent("prepare", 0, 1, message=f"loading {config.model}"))
    loaded = load_model(config.model, config.device, config.dtype, config.device_map)
    return loaded, objective_spec(config.objective).build(loaded, config)


def _copy_out(trajectory: Trajectory, out: Path | str | None) -> Trajectory:
    if out is None:
        return trajectory
    copy = replace(trajectory, meta=dict(trajectory.meta), path=None)
    copy.save(Path(out))
    return copy


def run_gisp(
    loaded: LoadedModel,
    the_plan: PruningPlan,
    objective: Objective,
    progress: ProgressCallback = null_progress,
    checkpoint: Path | None = None,
    resume: bool = False,
    follow: np.ndarray | None = None,
) -> Trajectory:
    """The iterative loop on a loaded model (which it prunes in place).

    With ``checkpoint`` the state after each step is written there; with ``resume`` a state
    found there is continued from. With ``follow`` (a trajectory's ``removal_step``) each step removes
    what that trajectory removed instead of what the method chooses: the scores are measured along
    that order, and ``meta["followed"]`` says per step how much of it the method would have chosen too.
    """
    config, space = the_plan.config, the_plan.space
    model, adapter = loaded.model, loaded.adapter
    n, total_steps = space.size, config.steps
    protected = space.protected_mask(the_plan.protect_first, config.protect_last)
    scored_layers = [i for i in range(space.geometry.num_layers) if i not in the_plan.protected_layers]
    method = methods.get(config.method)
    divisors = space.divisors(config.normalization)

    def scoring(**current) -> methods.Scoring:
        return methods.Scoring(model, adapter, space, objective, scored_layers, divisors, config.seed, **current)

    # a fixed ranking is computed once, on the dense model (before any resumed state prunes it)
    fixed = None if method.rescores else method.scores(scoring())
    ratios = target_ratios(config.schedule, config.max_sparsity, total_steps)
    layer_share = n / max(1, int((~protected).sum()))
    align = config.align or 1

    keep = np.ones(n, bool)
    layout = full_layout(space)
    removal_step = np.full(n, -1, np.int32)
    last_score = np.full(n, np.nan, np.float32)
    all_scores = np.full((total_steps, n), np.nan, np.float32) if config.save_scores else None
    steps: list[StepRecord] = []
    started = time.perf_counter()
    first = 1
    state = None
    if checkpoint and resume:
        try:
            state = LoopState.load(checkpoint, the_plan.key)
        except GispError as exc:  # said, then started over: a lost checkpoint costs time, not a result
            progress(ProgressEvent("prepare", 0, 1, message=f"{exc}; starting from step 1"))
    if distributed.context().active and resume:  # rank 0 alone holds the checkpoint
        state = distributed.broadcast_object(state)
    if state is not None:
        removal_step, last_score, steps, first = state.removal_step, state.last_score, state.steps, state.done + 1
        if all_scores is not None and state.all_scores is not None:
            all_scores = state.all_scores
        started -= state.elapsed_s
        keep = (removal_step == -1) | (removal_step > state.done)
        layout = apply_keep(model, adapter, space, layout, keep, config.shrink)
        # done 0: a message shown, as the loading one is (the CLI prints those)
        progress(ProgressEvent("prepare", 0, 1, message=f"resuming after step {state.done} of {total_steps}"))

    def record(step: int, loss: float, removed: int) -> StepRecord:
        return StepRecord(
            step=step,
            structural_ratio=float(1.0 - keep.mean()),
            param_sparsity=space.param_sparsity(keep),
            loss=loss,
            kept_params=int(space.linear_params_per_layer(keep).sum()),
            removed=removed,
            wall_s=round(time.perf_counter() - started, 3),
            metrics=objective.summary(loss),
        )

    removed_last = int((removal_step == first - 1).sum()) if first > 1 else 0
    agreement: list[float] = []
    if follow is not None and (follow.shape != (n,) or follow.max(initial=0) > total_steps):
        raise GispError(
            f"the order to follow has {follow.shape[0]} structures and {int(follow.max(initial=0))} steps; "
            f"this run has {n} structures and {total_steps} steps"
        )
    progress(ProgressEvent("step", first - 1, total_steps, first - 1, total_steps, "pruning"))
    for t in range(first, total_steps + 1):
        scores = (
            fixed
            if fixed is not None
            else method.scores(scoring(layout=layout, progress=progress, step=t, total_steps=total_steps))
        )
        # a fixed ranking's loss (if any) is the dense model's: every step measures its own
        loss = scores.loss if method.rescores and scores.loss is not None else objective_value(model, objective)
        steps.append(record(t - 1, loss, removed_last))

        candidates = np.flatnonzero(keep & ~protected)
        last_score[candidates] = scores.values[candidates]
        if all_scores is not None:
            all_scores[t - 1, candidates] = scores.values[candidates]
        chosen = method.selection.choose(
            space,
            keep,
            protected,
            scores.values,
            methods.Cut(the_plan.targets[t - 1], ratios[t - 1], layer_share, align),
        )
        if follow is not None:
            given = np.flatnonzero(follow == t)
            agreement.append(len(np.intersect1d(chosen, given)) / max(1, len(given)))
            chosen = given
        removal_step[chosen] = t
        keep[chosen] = False
        removed_last = len(chosen)

        layout = apply_keep(model, adapter, space, layout, keep, config.shrink)
        if checkpoint is not None:
            LoopState(t, removal_step, last_score, all_scores, steps, time.perf_counter() - started).save(
                checkpoint, the_plan.key
            )
        info = {
            "loss": round(steps[-1].loss, 4),
            "ratio": round(float(1.0 - keep.mean()), 4),
            "params": round(space.param_sparsity(keep), 4),
        }
        progress(ProgressEvent("step", t, total_steps, t, total_steps, "pruning", info))

    progress(ProgressEvent("final", 0, 1, total_steps, total_steps, "loss of the last subnetwork"))
    steps.append(record(total_steps, objective_value(model, objective), removed_last))
    progress(ProgressEvent("final", 1, 1, total_steps, total_steps, "loss of the last subnetwork"))
    meta = _metadata(loaded, the_plan, objective, time.perf_counter() - started)
    if follow is not None:
        meta["followed"] = {
            "agreement": [round(a, 6) for a in agreement],
            "meaning": "per step, the share of the structures removed that the method would have "
            "chosen itself at that state",
        }
    return Trajectory(
        meta,
        space.geometry,
        space.gqa,
        removal_step,
        last_score,
        steps,
        all_scores,
        extras=fixed.extras if fixed is not None else {},
    )


@dataclass
class LoopState:
    """What the loop needs to continue after step ``done``: a checkpoint, written atomically."""

    done: int
    removal_step: np.ndarray
    last_score: np.ndarray
    all_scores: np.ndarray | None
    steps: list[StepRecord]
    elapsed_s: float

    def save(self, folder: Path, key: str) -> None:
        from safetensors.numpy import save_file

        with staging_dir(folder) as tmp:
            arrays = {"removal_step": self.removal_step, "last_score": self.last_score}
            if self.all_scores is not None:
                arrays["all_scores"] = self.all_scores
            save_file(arrays, str(tmp / "state.safetensors"))
            atomic_write_json(
                tmp / "state.json",
                {"key": key, "done": self.done, "elapsed_s": self.elapsed_s, "steps": [asdict(r) for r in self.steps]},
            )

    @staticmethod
    def finished_steps(folder: Path, key: str) -> int:
        """Steps the checkpoint in ``folder`` holds for ``key`` (0 when there is none), without reading its arrays."""
        try:
            meta = json.loads((folder / "state.json").read_text())
            return int(meta["done"]) if meta.get("key") == key else 0
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    @classmethod
    def load(cls, folder: Path, key: str) -> "LoopState | None":
        """The checkpoint for ``key``, or None when there is none.

        One that is there but cannot be used raises a GispError saying why, in one line.
        """
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        if not (folder / "state.json").exists():
            return None
        try:
            meta = json.loads((folder / "state.json").read_text())
            if meta.get("key") != key:
                raise ValueError(f"it belongs to request {meta.get('key')!r}, not {key!r}")
            arrays = load_file(str(folder / "state.safetensors"))
            return cls(
                int(meta["done"]),
                arrays["removal_step"].copy(),
                arrays["last_score"].copy(),
                arrays["all_scores"].copy() if "all_scores" in arrays else None,
                [StepRecord(**r) for r in meta["steps"]],
                float(meta["elapsed_s"]),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError, SafetensorError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise GispError(f"the checkpoint in {folder} cannot be resumed ({type(exc).__name__}: {reason})") from None


def _metadata(loaded: LoadedModel, the_plan: PruningPlan, objective: Objective, wall_s: float) -> dict:
    import torch
    import transformers

    settings = the_plan.config.to_dict()
    settings.update(
        protect_first=the_plan.protect_first,
        protected_layers=the_plan.protected_layers,
        batch_size=the_plan.config.resolved_batch_size(loaded.device),
    )
    ranking = methods.get(the_plan.config.method).describe()
    if "align" in the_plan.request:  # what the rounding does to the method's own order
        ranking += (
            f"; then every cut layer's MLP width rounded to the nearest multiple of "
            f"{the_plan.request['align']} (methods.ALIGN_RULE)"
        )
    return {
        "key": the_plan.key,
        "method": the_plan.config.method,
        "ranking": ranking,
        "model": loaded.describe(),
        "settings": settings,
        "objective": objective.describe(),
        "request": the_plan.request,
        "device": str(loaded.device),
        "processes": distributed.context().world_size,  # data-parallel scoring; not part of the key
        "versions": {
            "gisp_engine": ENGINE_VERSION,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(wall_s, 3),
    }
