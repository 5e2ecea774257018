"""Everything remembered about a trajectory as one row per step.

:func:`sweep_table` arranges the results of :mod:`gisp_engine.evaluation.checks`' store (what ``run_sweep``, the
Evaluate page and ``gisp eval`` remembered) into one :class:`SweepTable`: a column per check, cost figures, and of a
check measured with several settings one series (the preferred one, or the one covering the most steps), every
series remembered listed (:func:`list_series`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import GispError
from ..evaluation.checks import (
    row_label,
)
from ..evaluation.cost_llamacpp import spec_from_dict, spec_label
from ..pruning.trajectory import Trajectory

# ---- the table of a trajectory ---------------------------------------------------------------
COST = "cost"  # the task name of cost rows in the evaluation store
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
    from ..evaluation.checks import load_evaluations

    rows = load_evaluations(trajectory) if evaluations is None else evaluations
    return {task: _ordered(task, by_key) for task, by_key in _group(rows, trajectory.num_steps + 1).items()}


def sweep_table(
    trajectory: Trajectory, evaluations: list[dict] | None = None, prefer: dict[str, str] | None = None
) -> SweepTable:
    """Everything remembered about ``trajectory`` as one row per step (see :class:`SweepTable`).

    ``prefer``: task -> the series to show (``SweepRequest.series_keys``: the settings a user asked for);
    a task without a preferred series that is remembered shows the one covering the most steps (then the newest).
    """
    from ..evaluation.checks import load_evaluations

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
