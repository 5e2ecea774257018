"""The deployment point a user's constraints allow, and two trajectories compared in words.

:func:`recommend` picks the sparsest step of a :class:`~gisp_engine.choose.table.SweepTable` that meets every
:class:`Constraints` (a speed-up only where every repeat meets it), or says which constraint binds and at which exact
steps each one holds; :func:`compare_at` states the difference of two trajectories at one sparsity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import GispError
from .table import PERPLEXITY, SweepTable


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
