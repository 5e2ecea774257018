"""A whole trajectory for quality and cost, and the deployment point a user's constraints allow.

:func:`run_sweep` evaluates every step (or the steps asked for) on each check, and optionally
measures each step's cost: in PyTorch (:mod:`gisp_engine.cost`, the sliced model) or in llama.cpp
(:mod:`gisp_engine.cost_llamacpp`, each step's GGUF). The steps are nested, so one model is
sliced forward from step to step instead of being reloaded. Every result is remembered per
(trajectory, step, check) in the evaluation store of :mod:`gisp_engine.checks`, the one the
Evaluate page and ``gisp eval`` use: a point already evaluated is never computed again, and a
sweep that was killed continues where it stopped.

:func:`sweep_table` arranges what is remembered into one row per step; :func:`recommend` picks
the sparsest step that meets every :class:`Constraints`, or says which constraint binds;
:func:`compare_at` states the difference of two trajectories at one sparsity in words.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checks import (
    available_checks,
    evaluate_step,
    evaluation_identity,
    find_evaluation,
    remember_evaluation,
    row_label,
    trajectory_family,
)
from . import llamacpp, settings
from .cost import CostSpec, cost_ratios, measure_costs
from .cost_llamacpp import DEVICE as LLAMACPP_DEVICE
from .cost_llamacpp import GGUFCostSpec, GGUFRun, measure_gguf_costs, spec_from_dict, spec_label
from .errors import GispError
from .fsutil import TMP_MARK, ensure_writable_dir
from .models import LoadedModel
from .progress import ProgressCallback, ProgressEvent, null_progress
from .subnetwork import check_compatible, compensates
from .surgery import apply_keep, full_layout
from .trajectory import Trajectory

COST = "cost"  # the task name of cost rows in the evaluation store


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
    bos: str = "auto"  # WikiText-2's BOS policy (gisp_engine.data.BOS_POLICIES)

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
    from .models import resolve_device, resolve_dtype

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
    from .export_gguf import check_request
    from .methods import check_align

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
        from .export_gguf import export_gguf

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


# ---- the table of a trajectory ---------------------------------------------------------------
PERPLEXITY = "wikitext2"


@dataclass
class SweepTable:
    """One row per step of a trajectory with every remembered figure; NaN where not measured.

    ``quality``: column -> values per step (``wikitext2`` perplexity, ``cmqa`` average accuracy,
    one column per decision task, ``gsm8k``...), ``labels``: column -> the settings it was measured
    with, ``cost``: figure -> values per step (``prefill_speedup`` with ``prefill_speedup_low``/``_high``,
    ``memory_ratio``, ``peak_bytes``...). Of a check measured with several settings, one series is shown
    (``series``: task -> its key); ``alternatives`` lists every series remembered per task (``cost`` too).
    """

    steps: np.ndarray
    param_sparsity: np.ndarray
    structural_ratio: np.ndarray
    kept_params: np.ndarray
    quality: dict[str, np.ndarray]
    metric: dict[str, str]  # column -> "perplexity" | "accuracy"
    labels: dict[str, str]
    cost: dict[str, np.ndarray]
    cost_label: str | None = None
    series: dict[str, str] = field(default_factory=dict)
    alternatives: dict[str, list["Series"]] = field(default_factory=dict)

    @property
    def accuracy_columns(self) -> list[str]:
        return [c for c, m in self.metric.items() if m == "accuracy"]

    def dense(self, column: str) -> float:
        values = self.quality[column] if column in self.quality else self.cost[column]
        return float(values[0])

    def to_rows(self) -> list[dict]:
        rows = []
        for i, step in enumerate(self.steps):
            row = {
                "step": int(step),
                "param_sparsity": float(self.param_sparsity[i]),
                "structural_ratio": float(self.structural_ratio[i]),
                "kept_params": int(self.kept_params[i]),
            }
            row.update({c: _plain(v[i]) for c, v in self.quality.items()})
            row.update({c: _plain(v[i]) for c, v in self.cost.items()})
            rows.append(row)
        return rows


def _plain(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def series_key(identity: dict) -> str:
    """What identifies a series of results: a result's identity without its step."""
    rest = {k: v for k, v in identity.items() if k != "step"}
    return repr(sorted((k, repr(v)) for k, v in rest.items()))


@dataclass(frozen=True)
class Series:
    """The results of one check measured with one set of settings, over some steps."""

    task: str
    key: str
    label: str
    steps: tuple[int, ...]
    created: str  # the newest result's time

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def series_label(row: dict) -> str:
    """A remembered result's settings in words (``checks.row_label``); a cost row's from its identity, which names
    the runtime (PyTorch rows stored before llama.cpp costs existed are labelled as today's)."""
    if row.get("task") != COST:
        return row_label(row)
    options = (row.get("identity") or {}).get("options") or {}
    try:
        return spec_label(spec_from_dict(options["spec"]), options.get("device", "?"))
    except (KeyError, TypeError, GispError):  # a row of another shape: its own label
        return row.get("label", COST)


def _group(rows: list[dict], n: int) -> dict[str, dict[str, list[dict]]]:
    """task -> series key -> rows (of steps 0..n-1)."""
    out: dict[str, dict[str, list[dict]]] = {}
    for row in rows:
        if 0 <= int(row.get("step", -1)) < n:
            out.setdefault(row["task"], {}).setdefault(series_key(row.get("identity", {})), []).append(row)
    return out


def _series(task: str, key: str, rows: list[dict]) -> Series:
    return Series(
        task,
        key,
        series_label(rows[0]),
        tuple(sorted({int(r["step"]) for r in rows})),
        max(r.get("created", "") for r in rows),
    )


def _ordered(task: str, by_key: dict[str, list[dict]]) -> list[Series]:
    """The series of a task, covering the most steps first; among equals the newest first."""
    newest_first = sorted((_series(task, k, r) for k, r in by_key.items()), key=lambda x: x.created, reverse=True)
    return sorted(newest_first, key=lambda x: -len(x.steps))  # stable: ties stay newest first


def list_series(trajectory: Trajectory, evaluations: list[dict] | None = None) -> dict[str, list[Series]]:
    """Per check (and ``cost``), every series remembered for ``trajectory``: most steps first, then newest."""
    from .checks import load_evaluations

    rows = load_evaluations(trajectory) if evaluations is None else evaluations
    return {task: _ordered(task, by_key) for task, by_key in _group(rows, trajectory.num_steps + 1).items()}


def sweep_table(
    trajectory: Trajectory, evaluations: list[dict] | None = None, prefer: dict[str, str] | None = None
) -> SweepTable:
    """Everything remembered about ``trajectory`` as one row per step (see :class:`SweepTable`).

    ``prefer``: task -> the series to show (``SweepRequest.series_keys``: the settings a user asked for);
    a task without a preferred series that is remembered shows the one covering the most steps (then the newest).
    """
    from .checks import load_evaluations

    rows = load_evaluations(trajectory) if evaluations is None else evaluations
    n = trajectory.num_steps + 1
    table = SweepTable(
        steps=np.arange(n),
        param_sparsity=np.array([r.param_sparsity for r in trajectory.steps]),
        structural_ratio=np.array([r.structural_ratio for r in trajectory.steps]),
        kept_params=np.array([r.kept_params for r in trajectory.steps]),
        quality={},
        metric={},
        labels={},
        cost={},
    )
    grouped = _group(rows, n)
    prefer = prefer or {}
    direct = set(grouped)
    for task in sorted(grouped, key=lambda t: (t != PERPLEXITY, t)):
        by_key = grouped[task]
        series = table.alternatives[task] = _ordered(task, by_key)
        key = prefer.get(task) if prefer.get(task) in by_key else series[0].key
        table.series[task] = key
        chosen = sorted(by_key[key], key=lambda r: int(r["step"]))
        if task == COST:
            table.cost_label = series_label(chosen[0])
            for row in chosen:
                for name, value in row.get("details", {}).items():
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        table.cost.setdefault(name, np.full(n, np.nan))[row["step"]] = float(value)
            continue
        metric = chosen[0].get("metric", "accuracy")
        column = table.quality.setdefault(task, np.full(n, np.nan))
        table.metric[task], table.labels[task] = metric, row_label(chosen[0])
        for row in chosen:
            column[row["step"]] = float(row["value"])
            # a suite's per-task accuracies become columns of their own, unless measured directly
            for name, sub in (row.get("details", {}).get("tasks") or {}).items():
                if name in direct or not isinstance(sub, dict) or "acc" not in sub:
                    continue
                table.quality.setdefault(name, np.full(n, np.nan))[row["step"]] = float(sub["acc"])
                table.metric[name], table.labels[name] = "accuracy", f"{name} accuracy (from {table.labels[task]})"
    return table


# ---- choosing a point ------------------------------------------------------------------------
@dataclass(frozen=True)
class Constraints:
    """What a deployment must meet; None means no limit. Accuracies are fractions (0.45, not 45)."""

    max_perplexity: float | None = None
    max_perplexity_ratio: float | None = None  # x dense
    min_average_accuracy: float | None = None
    min_task_accuracy: tuple[tuple[str, float], ...] = ()
    max_memory_mb: float | None = None  # peak memory of one prefill + decode, MiB
    min_prefill_speedup: float | None = None  # x dense
    min_decode_speedup: float | None = None  # x dense

    def __post_init__(self):
        def bad(what: str):
            raise GispError(f"constraint {what}")

        if self.max_perplexity is not None and self.max_perplexity < 1:
            bad(f"max perplexity {self.max_perplexity:g} is below 1, which no model can reach (perplexity >= 1)")
        if self.max_perplexity_ratio is not None and self.max_perplexity_ratio <= 0:
            bad(f"max perplexity ratio {self.max_perplexity_ratio:g} must be above 0 (1 = as good as dense)")
        for name, value in [("average", self.min_average_accuracy), *self.min_task_accuracy]:
            if value is not None and not 0 <= value <= 1:
                bad(f"min accuracy of {name} is {value:g}: give a fraction between 0 and 1")
        if self.max_memory_mb is not None and self.max_memory_mb <= 0:
            bad(f"max memory {self.max_memory_mb:g} MiB must be above 0")
        for name, value in (("prefill", self.min_prefill_speedup), ("decode", self.min_decode_speedup)):
            if value is not None and value <= 0:
                bad(f"min {name} speed-up {value:g} must be above 0 (1 = as fast as dense)")

    @property
    def empty(self) -> bool:
        return (
            all(
                v is None
                for v in (
                    self.max_perplexity,
                    self.max_perplexity_ratio,
                    self.min_average_accuracy,
                    self.max_memory_mb,
                    self.min_prefill_speedup,
                    self.min_decode_speedup,
                )
            )
            and not self.min_task_accuracy
        )


@dataclass(frozen=True)
class _Test:
    name: str  # in words, e.g. "perplexity <= 300"
    column: str
    ok: np.ndarray  # per step: met (NaN: not measured counts as not met)
    measured: np.ndarray
    uncertain: np.ndarray  # per step: the median meets it but the spread of the repeats reaches below (not met)


def _tests(table: SweepTable, c: Constraints) -> list[_Test]:
    tests = []
    n = len(table.steps)
    none = np.full(n, np.nan)

    def add(
        name: str, column: str, values: np.ndarray, ok: np.ndarray, need: str, uncertain: np.ndarray | None = None
    ) -> None:
        measured = ~np.isnan(values)
        if not measured.any():
            raise GispError(
                f"the constraint '{name}' needs {need}, which this trajectory has no measurement of: "
                "run a sweep that includes it"
            )
        flagged = np.zeros(n, bool) if uncertain is None else uncertain & measured
        tests.append(_Test(name, column, ok & measured & ~flagged, measured, flagged))

    if c.max_perplexity is not None or c.max_perplexity_ratio is not None:
        ppl = table.quality.get(PERPLEXITY, none)
        if c.max_perplexity is not None:
            add(
                f"perplexity <= {c.max_perplexity:g}", PERPLEXITY, ppl, ppl <= c.max_perplexity, "WikiText-2 perplexity"
            )
        if c.max_perplexity_ratio is not None:
            if PERPLEXITY in table.quality and np.isnan(table.quality[PERPLEXITY][0]):
                raise GispError(
                    "the constraint on perplexity relative to dense needs the dense model's perplexity "
                    "(step 0): include step 0 in the sweep"
                )
            ratio = ppl / ppl[0]
            add(
                f"perplexity <= {c.max_perplexity_ratio:g}x dense",
                PERPLEXITY,
                ppl,
                ratio <= c.max_perplexity_ratio,
                "WikiText-2 perplexity",
            )
    if c.min_average_accuracy is not None:
        acc = table.quality.get("cmqa", none)
        add(
            f"average accuracy >= {c.min_average_accuracy:.1%}",
            "cmqa",
            acc,
            acc >= c.min_average_accuracy,
            "the average accuracy (task cmqa)",
        )
    for task, value in c.min_task_accuracy:
        acc = table.quality.get(task, none)
        add(f"{task} accuracy >= {value:.1%}", task, acc, acc >= value, f"{task} accuracy")
    if c.max_memory_mb is not None:
        mem = table.cost.get("peak_bytes", none) / 2**20
        add(
            f"peak memory <= {c.max_memory_mb:g} MiB",
            "peak_bytes",
            mem,
            mem <= c.max_memory_mb,
            "cost (a sweep with --cost)",
        )
    for what, limit in (("prefill", c.min_prefill_speedup), ("decode", c.min_decode_speedup)):
        if limit is None:
            continue
        column = f"{what}_speedup"
        speed = table.cost.get(column, none)
        low = table.cost.get(f"{column}_low", speed)  # results without a spread count as their median
        with np.errstate(invalid="ignore"):
            add(
                f"{what} >= {limit:g}x dense",
                column,
                speed,
                speed >= limit,
                "cost (a sweep with --cost)",
                uncertain=(speed >= limit) & (low < limit),
            )
    return tests


@dataclass
class Recommendation:
    step: int | None  # None when no step meets every constraint
    param_sparsity: float | None
    text: str
    meets: np.ndarray  # per step: meets every constraint
    binding: list[str]  # the constraints that stop a sparser step (or that nothing meets)
    measured: np.ndarray  # per step: every constrained figure measured
    uncertain: dict[str, list[int]] = field(default_factory=dict)  # constraint -> steps its noise leaves open


def _speed_text(table: SweepTable, column: str, step: int) -> str | None:
    speed = table.cost.get(column)
    if speed is None or np.isnan(speed[step]):
        return None
    text = f"{column.split('_')[0]} {speed[step]:.2f}x dense"
    low, high = table.cost.get(f"{column}_low"), table.cost.get(f"{column}_high")
    if low is not None and high is not None and not np.isnan(low[step]):
        text += f" [{low[step]:.2f}, {high[step]:.2f}]"
    return text


def describe_step(table: SweepTable, step: int) -> str:
    """e.g. 'step 7: 35.9% of parameters removed, perplexity 259 (4.9x dense), prefill 1.45x dense [1.38, 1.52]'."""
    parts = [f"step {step}: {table.param_sparsity[step]:.1%} of parameters removed"]
    ppl = table.quality.get(PERPLEXITY)
    if ppl is not None and not np.isnan(ppl[step]):
        text = f"perplexity {ppl[step]:.4g}"
        if not np.isnan(ppl[0]) and step:
            text += f" ({ppl[step] / ppl[0]:.2g}x dense)"
        parts.append(text)
    acc = table.quality.get("cmqa")
    if acc is not None and not np.isnan(acc[step]):
        parts.append(
            f"average accuracy {acc[step]:.1%}" + (f" (dense {acc[0]:.1%})" if step and not np.isnan(acc[0]) else "")
        )
    parts += [t for t in (_speed_text(table, c, step) for c in ("prefill_speedup", "decode_speedup")) if t]
    mem = table.cost.get("peak_bytes")
    if mem is not None and not np.isnan(mem[step]):
        parts.append(f"peak memory {mem[step] / 2**20:.0f} MiB")
    return ", ".join(parts)


NO_CONSTRAINT = "Set a constraint (perplexity, accuracy, memory or speed) to get a recommendation."


def recommend(table: SweepTable, constraints: Constraints) -> Recommendation:
    """The sparsest step that meets every constraint; when none does, which constraint binds.

    Nothing is recommended without a constraint. A speed-up whose repeats straddle its threshold does not
    count as met; the steps where that happened are named.
    """
    n = len(table.steps)
    if constraints.empty:
        return Recommendation(None, None, NO_CONSTRAINT, np.zeros(n, bool), [], np.zeros(n, bool))
    tests = _tests(table, constraints)
    measured = np.ones(n, bool)
    for t in tests:
        measured &= t.measured
    meets = measured.copy()
    for t in tests:
        meets &= t.ok
    uncertain = {t.name: [int(i) for i in np.flatnonzero(t.uncertain)] for t in tests if t.uncertain.any()}
    noise = "".join(
        f" {name}: too close to call (the repeats' spread straddles the threshold) at "
        f"{_steps_text(table, steps)}, counted as not met."
        for name, steps in uncertain.items()
    )
    if meets.any():
        candidates = np.flatnonzero(meets)
        step = int(candidates[np.argmax(table.param_sparsity[candidates])])
        sparser = [i for i in range(n) if table.param_sparsity[i] > table.param_sparsity[step] and measured[i]]
        binding = [t.name for t in tests if any(not t.ok[i] for i in sparser)]
        text = describe_step(table, step)
        text += (
            f"; a sparser step would break: {', '.join(binding)}" if binding else "; it is the sparsest step measured"
        )
        return Recommendation(
            step, float(table.param_sparsity[step]), text + "." + noise, meets, binding, measured, uncertain
        )
    if not measured.any():
        raise GispError("no step has every figure these constraints need: sweep the trajectory first")
    never = [t for t in tests if not (t.ok & measured).any()]
    if never:
        names = [t.name for t in never]
        best = "; ".join(_best_text(table, t) for t in never)
        text = f"No step meets {' and '.join(names)}: {best}." + noise
        return Recommendation(None, None, text, meets, names, measured, uncertain)
    # each constraint alone is met somewhere, but never together: they contradict on this trajectory
    spans = "; ".join(f"{t.name} holds at {_steps_text(table, np.flatnonzero(t.ok & measured))}" for t in tests)
    text = f"The constraints contradict each other on this trajectory: no step meets them all ({spans})." + noise
    return Recommendation(None, None, text, meets, [t.name for t in tests], measured, uncertain)


def _steps_text(table: SweepTable, steps) -> str:
    """Exactly these steps, with their sparsity: 'steps 5 (26.6%), 6 (32.3%) and 9 (49.0%)'."""
    parts = [f"{int(i)} ({table.param_sparsity[int(i)]:.1%})" for i in steps]
    if len(parts) == 1:
        return f"step {parts[0]} only"
    return f"steps {', '.join(parts[:-1])} and {parts[-1]}"


def _best_text(table: SweepTable, test: _Test) -> str:
    column = test.column
    if column in table.quality:
        values = table.quality[column]
        metric = table.metric[column]
        i = int(np.nanargmin(values) if metric == "perplexity" else np.nanargmax(values))
        shown = f"{values[i]:.4g}" if metric == "perplexity" else f"{values[i]:.1%}"
        return f"the best {column} measured is {shown} (step {i})"
    values = table.cost[column]
    if column == "peak_bytes":
        i = int(np.nanargmin(values))
        return f"the lowest peak memory measured is {values[i] / 2**20:.0f} MiB (step {i})"
    i = int(np.nanargmax(values))
    return f"the fastest {column.split('_')[0]} measured is {_speed_text(table, column, i)} (step {i})"


# ---- two trajectories -----------------------------------------------------------------------
def _value(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"


def compare_at(
    a: SweepTable,
    b: SweepTable,
    step_a: int,
    step_b: int,
    column: str = PERPLEXITY,
    names: tuple[str, str] = ("A", "B"),
) -> str | None:
    """e.g. 'A has 31% lower perplexity than B at 40%' (None when either point is not measured)."""
    va = a.quality.get(column, a.cost.get(column))
    vb = b.quality.get(column, b.cost.get(column))
    if va is None or vb is None or np.isnan(va[step_a]) or np.isnan(vb[step_b]):
        return None
    x, y = float(va[step_a]), float(vb[step_b])
    at = (
        f"at {a.param_sparsity[step_a]:.0%}"
        if abs(a.param_sparsity[step_a] - b.param_sparsity[step_b]) < 0.005
        else f"at {a.param_sparsity[step_a]:.1%} and {b.param_sparsity[step_b]:.1%} respectively"
    )
    metric = a.metric.get(column) or ("cost" if column in a.cost else "accuracy")
    na, nb = names
    if metric == "perplexity":
        if math.isclose(x, y, rel_tol=1e-3):
            return f"{na} and {nb} have the same perplexity ({x:.4g}) {at}"
        lower, higher = (na, nb) if x < y else (nb, na)
        ratio = max(x, y) / min(x, y)
        # past 2x a percentage says little ("100% lower" for 812.7 vs 245,600): the ratio says it
        by = f"{ratio:.3g}×" if ratio > 2 else f"{1 - 1 / ratio:.0%}"
        return f"{lower} has {by} lower perplexity than {higher} {at} ({_value(x)} vs {_value(y)})"
    if metric == "accuracy":
        if abs(x - y) < 5e-4:
            return f"{na} and {nb} have the same {column} accuracy ({x:.1%}) {at}"
        better, worse = (na, nb) if x > y else (nb, na)
        return (
            f"{better} is {abs(x - y) * 100:.1f} points more accurate than {worse} on {column} {at} "
            f"({x:.1%} vs {y:.1%})"
        )
    return f"{column}: {na} {x:.3g}, {nb} {y:.3g} {at}"
