"""A whole trajectory checked and timed, step by step.

:func:`run_sweep` evaluates every step (or the steps asked for) on each check, and optionally
measures each step's cost: in PyTorch (:mod:`gisp_engine.evaluation.cost`, the sliced model) or in llama.cpp
(:mod:`gisp_engine.evaluation.cost_llamacpp`, each step's GGUF). The steps are nested, so one model is
sliced forward from step to step instead of being reloaded. Every result is remembered per
(trajectory, step, check) in the evaluation store of :mod:`gisp_engine.evaluation.checks`, the one the
Evaluate page and ``gisp eval`` use: a point already evaluated is never computed again, and a
sweep that was killed continues where it stopped.

What is remembered becomes a table in :mod:`gisp_engine.choose.table`, and a deployment point in
:mod:`gisp_engine.choose.recommend`.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..core import settings
from ..core.errors import GispError
from ..core.fsutil import TMP_MARK, ensure_writable_dir
from ..core.progress import ProgressCallback, ProgressEvent, null_progress
from ..evaluation.checks import (
    available_checks,
    evaluate_step,
    evaluation_identity,
    find_evaluation,
    remember_evaluation,
    trajectory_family,
)
from ..evaluation.cost import CostSpec, cost_ratios, measure_costs
from ..evaluation.cost_llamacpp import DEVICE as LLAMACPP_DEVICE
from ..evaluation.cost_llamacpp import GGUFCostSpec, GGUFRun, measure_gguf_costs, spec_from_dict, spec_label
from ..model import llamacpp
from ..model.loading import LoadedModel
from ..model.surgery import apply_keep, full_layout
from ..pruning.subnetwork import check_compatible, compensates
from ..pruning.trajectory import Trajectory
from .table import COST, series_key


# ---- what to sweep --------------------------------------------------------------------------
def parse_steps(spec: str | Sequence[int] | None, trajectory: Trajectory) -> tuple[int, ...]:
    """``all`` (or None): every step 0..T; else steps given as ``0,2,4`` or a sequence, in order."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return tuple(range(trajectory.num_steps + 1))
    if isinstance(spec, str):
        try:
            steps = [int(s) for s in spec.split(",") if s.strip()]
        except ValueError:
            raise GispError(f"--steps must be 'all' or step numbers like 0,2,4, got {spec!r}") from None
    else:
        steps = [int(s) for s in spec]
    if not steps:
        raise GispError("no steps to sweep")
    for s in steps:
        trajectory.check_step(s)
    return tuple(sorted(set(steps)))


def parse_checks(spec: str | Sequence[str], allow_none: bool = False) -> tuple[str, ...]:
    """Check names (``wikitext2``, a decision task, ``cmqa``, ``gsm8k``, a custom task file), validated.

    ``none`` (or nothing, with ``allow_none``: a cost-only sweep) is no check.
    """
    names = [t.strip() for t in (spec.split(",") if isinstance(spec, str) else spec) if t and t.strip()]
    names = [n for n in names if n != "none"]
    if not names:
        if allow_none:
            return ()
        raise GispError("no checks to sweep: give --task wikitext2 or a task name (or --task none with --cost)")
    known = available_checks(names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise GispError(
            f"unknown task {', '.join(map(repr, unknown))}: choose from {', '.join(available_checks())}, "
            "or give a .jsonl file of multiple-choice items"
        )
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True)
class SweepRequest:
    """One sweep: which checks at which steps, with which settings (part of every result's identity).

    ``limit`` applies to every check without one of its own in ``limits`` ((task, limit) pairs), so that
    a quick accuracy sweep does not also re-measure perplexity on a handful of windows.
    """

    tasks: tuple[str, ...] = ("wikitext2",)
    steps: tuple[int, ...] | None = None  # None: every step
    limit: int | None = None  # WikiText-2 windows, or items per task
    seq_len: int = 128
    batch_size: int = 8
    cost: CostSpec | GGUFCostSpec | None = None  # in PyTorch, or in llama.cpp
    limits: tuple[tuple[str, int | None], ...] = ()  # per check, overriding ``limit``
    bos: str = "auto"  # WikiText-2's BOS policy (gisp_engine.data.text.BOS_POLICIES)

    def limit_for(self, task: str) -> int | None:
        return dict(self.limits).get(task, self.limit)

    def options(self, task: str) -> dict:
        check = available_checks([task])[task]
        given = {"seq_len": self.seq_len, "batch_size": self.batch_size, "bos": self.bos}
        return {k: v for k, v in given.items() if k in check.options}

    def resolved_options(self, task: str, family: str | None) -> dict:
        """The options of ``task`` as its results' identities hold them."""
        return available_checks([task])[task].resolve(self.options(task), family)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["tasks"], d["steps"] = list(self.tasks), None if self.steps is None else list(self.steps)
        d["limits"] = [list(pair) for pair in self.limits]
        d["cost"] = None if self.cost is None else self.cost.to_dict()  # a llama.cpp spec names its runtime
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SweepRequest":
        d = dict(d)
        d["tasks"] = tuple(d.get("tasks") or ("wikitext2",))
        d["steps"] = None if d.get("steps") is None else tuple(d["steps"])
        d["cost"] = spec_from_dict(d["cost"]) if d.get("cost") else None
        d["limits"] = tuple((str(t), n) for t, n in d.get("limits") or ())
        return cls(**d)

    def series_keys(self, trajectory: Trajectory, dtype: str, device: str | None = None) -> dict[str, str]:
        """Per check (and ``cost``), the key of the series of results this request asks for (see ``series_key``).

        A PyTorch cost series needs the device it is measured on; without one it is left out (llama.cpp's is
        always the CPU).
        """
        family = trajectory_family(trajectory)
        keys = {
            task: series_key(
                evaluation_identity(task, 0, self.limit_for(task), self.resolved_options(task, family), dtype)
            )
            for task in self.tasks
        }
        if self.cost is not None and (device is not None or self.cost.runtime == "llamacpp"):
            keys[COST] = series_key(evaluation_identity(COST, 0, None, _cost_identity(self.cost, device, dtype), dtype))
        return keys


def requested_series(
    trajectory: Trajectory, request: SweepRequest, device: str = "auto", dtype: str = "auto"
) -> dict[str, str]:
    """``request.series_keys`` for a request not run yet: its device and dtype resolved as the sweep will."""
    from ..model.loading import resolve_device, resolve_dtype

    dev = resolve_device(device)
    resolved = str(resolve_dtype(dtype, dev)).removeprefix("torch.")
    where = f"cuda:{dev.index or 0}" if dev.type == "cuda" else str(dev)  # as a loaded model's device reads
    return request.series_keys(trajectory, resolved, where)


@dataclass
class SweepReport:
    """What a sweep did: the points computed now and those remembered from before."""

    trajectory: str
    steps: tuple[int, ...]
    tasks: tuple[str, ...]
    computed: int = 0
    remembered: int = 0
    rows: list[dict] = field(default_factory=list)  # every point's stored row, in the order swept

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if row.get("cached"):
            self.remembered += 1
        else:
            self.computed += 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- running it -----------------------------------------------------------------------------
def _cost_identity(spec: CostSpec | GGUFCostSpec, device: str | None, dtype: str) -> dict:
    """The options of a cost row: the workload with its thread count resolved (a llama.cpp one with its runtime,
    GGUF type, layout and alignment), the device (llama.cpp's: the CPU) and the dtype of the model swept."""
    spec = spec.resolved()
    return {"spec": spec.to_dict(), "device": _cost_device(spec, device), "threads": spec.threads, "dtype": dtype}


def _cost_device(spec: CostSpec | GGUFCostSpec, device: str | None) -> str | None:
    """Where a cost is measured: the swept model's device in PyTorch, the CPU in llama.cpp."""
    return LLAMACPP_DEVICE if spec.runtime == "llamacpp" else device


def check_cost(trajectory: Trajectory, spec: CostSpec | GGUFCostSpec | None, runtime: bool = True) -> None:
    """Refuse, in one line and before any model is loaded, a llama.cpp cost that cannot be measured: an unknown
    GGUF type, a family or layout llama.cpp cannot hold, a bad alignment, or (``runtime``) no llama.cpp here."""
    if spec is None or spec.runtime != "llamacpp":
        return
    from ..export.gguf import check_request
    from ..pruning.methods import check_align

    check_request(trajectory_family(trajectory) or "unknown", spec.outtype, spec.uniform, compensates(trajectory))
    if spec.align is not None:
        check_align(spec.align, trajectory.geometry.intermediate_size)
    if runtime:
        llamacpp.runtime()


def pending_points(
    trajectory: Trajectory, request: SweepRequest, dtype: str, device: str | None = None
) -> list[tuple[int, str]]:
    """(step, check) points the store does not hold yet; cost points need the device to be known."""
    steps = parse_steps(request.steps, trajectory)
    family = trajectory_family(trajectory)
    todo = []
    for step in steps:
        for task in request.tasks:
            options = request.resolved_options(task, family)
            if find_evaluation(trajectory, task, step, request.limit_for(task), options, dtype) is None:
                todo.append((step, task))
        if request.cost is not None:
            where = _cost_device(request.cost, device)
            opts = _cost_identity(request.cost, where or "?", dtype)
            if where is None or find_evaluation(trajectory, COST, step, None, opts, dtype) is None:
                todo.append((step, COST))
    return todo


def run_sweep(
    trajectory: Trajectory,
    model: LoadedModel | Callable[[], LoadedModel],
    request: SweepRequest = SweepRequest(),
    progress: ProgressCallback = null_progress,
    copy_model: bool = True,
    refresh: bool = False,
    dtype: str | None = None,
) -> SweepReport:
    """Evaluate ``request.tasks`` (and cost) at each requested step, remembering every point.

    The report's rows are exactly the requested points, computed now or remembered with exactly the
    requested settings (never another limit's or window's results).

    ``model``: the dense model the trajectory was built for, or a function that loads it, called
    only when some point is not remembered yet (``dtype``: the dtype it would load in, so that
    remembered points can be found without loading it). The model is sliced forward from step to
    step, so with ``copy_model=False`` the caller's model is pruned in place (to the last step swept).
    A llama.cpp cost alone (no checks) never slices it: each step's GGUF is written from a copy.
    """
    steps = parse_steps(request.steps, trajectory)
    tasks = parse_checks(request.tasks, allow_none=request.cost is not None)
    request = dataclasses.replace(request, tasks=tasks, steps=steps)
    for task in tasks:
        limit = request.limit_for(task)
        if limit is not None and limit < 1:
            raise GispError(f"the limit of {task} must be at least 1 (or none for all), got {limit}")
    spec = request.cost
    in_llamacpp = spec is not None and spec.runtime == "llamacpp"
    check_cost(trajectory, spec, runtime=False)
    report = SweepReport(trajectory.key or str(trajectory.path), steps, tasks)
    loaded = model if isinstance(model, LoadedModel) else None
    if loaded is not None:
        dtype = str(loaded.dtype).removeprefix("torch.")
    elif (
        dtype is None or refresh or (spec is not None and not in_llamacpp) or pending_points(trajectory, request, dtype)
    ):
        if in_llamacpp:
            check_cost(trajectory, spec)  # no llama.cpp here: refused before the model is loaded
        progress(ProgressEvent("prepare", 0, 1, message="loading the model"))
        loaded = model()
        dtype = str(loaded.dtype).removeprefix("torch.")
    device = str(loaded.device) if loaded is not None else None
    # the working model is sliced forward from step to step for the checks and the PyTorch cost
    slices = bool(tasks) or (spec is not None and not in_llamacpp)
    untouched = None  # the caller's dense model, when the sweep slices a copy of it
    if loaded is not None:
        check_compatible(loaded, trajectory)
        if copy_model and slices:
            untouched = loaded.model
            loaded = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
    dense = None
    if spec is not None and (refresh or pending_points(trajectory, request, dtype, device)):
        # ratios are to the dense model, timed in this process alongside each step (kept unsliced)
        dense = untouched if untouched is not None else loaded.model if not slices else copy.deepcopy(loaded.model)
    ggufs = None
    if in_llamacpp and dense is not None:
        check_cost(trajectory, spec)
        ggufs = _GGUFCosts(dataclasses.replace(loaded, model=dense), trajectory, spec)

    total = len(steps) * (len(tasks) + (spec is not None))
    done = 0
    layout = full_layout(trajectory.space)
    progress(ProgressEvent("sweep", 0, total, message="sweeping"))
    try:
        for step in steps:
            if loaded is not None and step > 0 and slices:
                # nested steps: slicing the current model forward gives the next subnetwork
                layout = apply_keep(
                    loaded.model, loaded.adapter, trajectory.space, layout, trajectory.keep_mask(step), True
                )
            for task in tasks:
                limit = request.limit_for(task)
                if loaded is None:
                    resolved = request.resolved_options(task, trajectory_family(trajectory))
                    row = dict(find_evaluation(trajectory, task, step, limit, resolved, dtype), cached=True)
                else:
                    row = evaluate_step(
                        loaded,
                        trajectory,
                        step,
                        task,
                        limit,
                        request.options(task),
                        _inner(progress, step, task),
                        refresh=refresh,
                    )
                report.add(row)
                done += 1
                progress(ProgressEvent("sweep", done, total, message=f"step {step}: {task}"))
            if spec is not None:
                if in_llamacpp:
                    row = _gguf_cost_point(ggufs, trajectory, step, spec, dtype, refresh)
                else:
                    row = _cost_point(loaded, trajectory, step, spec, dense, device, dtype, refresh)
                report.add(row)
                done += 1
                progress(ProgressEvent("sweep", done, total, message=f"step {step}: cost"))
    finally:
        if ggufs is not None:
            ggufs.close()
    return report


def cost_label(spec: CostSpec | GGUFCostSpec, device: str) -> str:
    return spec_label(spec, device)


def _inner(progress: ProgressCallback, step: int, task: str) -> ProgressCallback:
    def report(event: ProgressEvent) -> None:
        progress(dataclasses.replace(event, phase="eval", message=f"step {step} {task}"))

    return report


def _cost_row(
    trajectory: Trajectory,
    step: int,
    spec,
    device: str,
    dtype: str,
    cost: dict,
    dense_cost: dict,
    extra: dict | None = None,
) -> dict:
    """A cost row as remembered: its identity, the figures with their ratios to dense, and the dense ones."""
    import datetime as _dt

    ratios = cost_ratios(cost, dense_cost)
    row = {
        "identity": evaluation_identity(COST, step, None, _cost_identity(spec, device, dtype), dtype),
        "task": COST,
        "metric": COST,
        "label": cost_label(spec, device),
        "value": float(ratios["prefill_speedup"]),
        "step": int(step),
        "param_sparsity": trajectory.steps[step].param_sparsity,
        "structural_ratio": trajectory.steps[step].structural_ratio,
        "model": trajectory.meta.get("model", {}).get("id"),
        "device": device,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "details": {**cost, **ratios, **(extra or {}), "dense": dense_cost},
    }
    remember_evaluation(trajectory, row)
    return dict(row, cached=False)


def _remembered_cost(trajectory: Trajectory, step: int, spec, device: str, dtype: str) -> dict | None:
    hit = find_evaluation(trajectory, COST, step, None, _cost_identity(spec, device, dtype), dtype)
    return None if hit is None else dict(hit, cached=True)


def _cost_point(loaded, trajectory, step, spec, dense, device, dtype, refresh) -> dict:
    spec = spec.resolved()
    if not refresh and (hit := _remembered_cost(trajectory, step, spec, device, dtype)) is not None:
        return hit
    # the working model is at ``step`` now; the dense copy is timed in turn with it
    models = [loaded.model] if step == 0 else [loaded.model, dense]
    costs = [c.to_dict() for c in measure_costs(models, spec)]
    return _cost_row(trajectory, step, spec, device, dtype, costs[0], costs[-1])


def _gguf_cost_point(
    ggufs: "_GGUFCosts | None", trajectory: Trajectory, step: int, spec: GGUFCostSpec, dtype: str, refresh: bool
) -> dict:
    spec = spec.resolved()
    if not refresh and (hit := _remembered_cost(trajectory, step, spec, LLAMACPP_DEVICE, dtype)) is not None:
        return hit
    cost, dense_cost, manifest = ggufs.measure(step)
    gguf = manifest["gguf"]
    extra = {
        "export_param_sparsity": float(manifest["param_sparsity"]),
        "padding_overhead": gguf["padding_overhead"],
        "kv_heads": gguf["kv_heads"],
        "arch": gguf["arch"],
        "layout": gguf["layout"],
    }
    return _cost_row(trajectory, step, spec, LLAMACPP_DEVICE, dtype, cost, dense_cost, extra)


class _GGUFCosts:
    """Each step's GGUF, written from a copy of the dense model (an export slices what it is given) into a scratch
    folder of the cache, timed in llama.cpp against the dense model's GGUF written the same way, which stays
    loaded. One step's copy and file at a time: memory and disk stay bounded."""

    def __init__(self, dense: LoadedModel, trajectory: Trajectory, spec: GGUFCostSpec):
        self.dense, self.trajectory, self.spec = dense, trajectory, spec.resolved()
        root = ensure_writable_dir(settings.cache_dir() / "exports")  # gisp cache prune removes what a kill leaves
        self.scratch = Path(tempfile.mkdtemp(dir=root, prefix=f"{TMP_MARK}gguf-cost-"))
        self.reference: GGUFRun | None = None
        self.reference_manifest: dict = {}

    def _write(self, step: int):
        from ..export.gguf import export_gguf

        working = dataclasses.replace(self.dense, model=copy.deepcopy(self.dense.model))
        try:
            return export_gguf(
                working,
                self.trajectory,
                step,
                self.scratch / f"step{step}",
                uniform=self.spec.uniform,
                outtype=self.spec.outtype,
                align=self.spec.align,
                n_threads=self.spec.threads,
            )
        finally:
            del working

    def measure(self, step: int) -> tuple[dict, dict, dict]:
        """This step's cost and the dense GGUF's (timed in turn with it), and the step's export manifest."""
        if self.reference is None:
            exported = self._write(0)
            self.reference, self.reference_manifest = GGUFRun(exported.gguf_path, self.spec), exported.manifest
        if step == 0:
            (cost,) = measure_gguf_costs([self.reference])
            return cost.to_dict(), cost.to_dict(), self.reference_manifest
        exported = self._write(step)
        try:
            with GGUFRun(exported.gguf_path, self.spec) as run:
                cost, dense_cost = measure_gguf_costs([run, self.reference])
        finally:
            shutil.rmtree(exported.folder, ignore_errors=True)
        return cost.to_dict(), dense_cost.to_dict(), exported.manifest

    def close(self) -> None:
        if self.reference is not None:
            self.reference.close()
            self.reference = None
        shutil.rmtree(self.scratch, ignore_errors=True)
