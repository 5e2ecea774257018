"""What the explorer draws, prepared from a trajectory once so that choosing a step is a threshold.

A trajectory says when each structure was removed (``removal_step``). Everything the Explore
and Compare pages show at a chosen step follows from comparing that array with the step, so
:class:`TrajectoryView` arranges it once (grids per layer, channels sorted by removal, kept
counts and parameter counts for every step) and :meth:`TrajectoryView.at` only thresholds it.
No Streamlit here: the app, the benchmark and a notebook use the same functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import settings
from ..core.errors import GispError
from ..pruning import cache
from ..pruning.trajectory import META_FILE, Trajectory

EXAMPLES_DIRNAME = "examples"


# ---- what can be explored ------------------------------------------------------------------
def examples_dir() -> Path:
    """Trajectories carried by the repository (``cache/examples/``), whatever the cache setting."""
    return settings.PROJECT_ROOT / "cache" / EXAMPLES_DIRNAME


def available_trajectories() -> list[dict]:
    """Cache entries (newest first), then the repository's examples (the default model's first, then by
    name); each row names its ``source``.

    An example that is also in the cache (same request key) is listed once, as the example.
    """
    examples = []
    for row in sorted(
        cache.list_cached(examples_dir()), key=lambda r: (r.get("model") != settings.DEFAULT_MODEL, r["path"])
    ):
        row = dict(row, source="example", name=Path(row["path"]).name)
        try:
            row["key"] = json.loads((Path(row["path"]) / META_FILE).read_text())["key"]
        except (OSError, ValueError, KeyError):
            pass
        examples.append(row)
    example_keys = {r["key"] for r in examples}
    cached = [dict(r, source="cache", name=r["key"]) for r in cache.list_cached() if r["key"] not in example_keys]
    return cached + examples


def describe(row: dict) -> str:
    """One line naming a trajectory in a list."""
    return (
        f"{row['source']}: {row['name']} · {row['model']} · {row.get('method', 'gisp')} · {row['objective']} · "
        f"{row['steps']} steps "
        f"to {row['max_param_sparsity']:.0%} params"
    )


def load_trajectory(path: str | Path) -> Trajectory:
    path = Path(path)
    if not path.exists() and not any(sep in str(path) for sep in "/\\"):
        path = cache.path_for(str(path))  # a bare cache key
    return Trajectory.load(path)


# ---- one trajectory ------------------------------------------------------------------------
@dataclass
class StepView:
    """The chosen point of a trajectory: heatmap values, per-layer fractions and counts."""

    step: int
    param_sparsity: float
    structural_ratio: float
    loss: float
    head_z: np.ndarray  # (layers, head units) int16: removal step if removed by ``step``, else 0 (kept)
    channel_z: np.ndarray  # (layers, channels) int16, columns sorted by removal within each layer
    head_kept_fraction: np.ndarray  # (layers,)
    channel_kept_fraction: np.ndarray  # (layers,)
    kept_params_per_layer: np.ndarray  # (layers,)
    kept_heads: int
    kept_channels: int
    kept_params: int
    total_params: int


@dataclass
class TrajectoryView:
    """A trajectory arranged for drawing; built once, then :meth:`at` per chosen step."""

    key: str
    path: str
    model: str
    method: str  # gisp, or a baseline (gisp_engine.pruning.methods)
    objective: str
    head_unit: str  # "query head" or "KV group"
    num_steps: int
    protected_layers: list[int]
    param_sparsity: np.ndarray  # (T+1,)
    structural_ratio: np.ndarray  # (T+1,)
    loss: np.ndarray  # (T+1,)
    kept_params: np.ndarray  # (T+1,)
    total_params: int
    head_removal: np.ndarray  # (L, H) int16, -1 = never
    head_score: np.ndarray  # (L, H) float32
    channel_removal: np.ndarray  # (L, C) int16 in original order
    channel_order: np.ndarray  # (L, C) int16: original channel index of each sorted column
    channel_removal_sorted: np.ndarray  # (L, C) int16
    channel_custom_sorted: np.ndarray  # (L, C, 3) float32: channel index, last step kept at (T: never removed), score
    head_kept: np.ndarray  # (T+1, L) kept head units per layer at every step
    channel_kept: np.ndarray  # (T+1, L)
    params_per_layer: np.ndarray  # (T+1, L) kept decoder linear weights

    @property
    def num_layers(self) -> int:
        return self.head_removal.shape[0]

    @property
    def head_units(self) -> int:
        return self.head_removal.shape[1]

    @property
    def channels(self) -> int:
        return self.channel_removal.shape[1]

    @classmethod
    def from_trajectory(cls, traj: Trajectory) -> "TrajectoryView":
        space, t_max = traj.space, traj.num_steps
        head_removal, channel_removal = (g.astype(np.int16) for g in space.as_grid(traj.removal_step))
        head_score, channel_score = space.as_grid(traj.score.astype(np.float32))
        # never-removed channels sort last; within one step, the lower score was ranked first
        sort_step = np.where(channel_removal < 0, t_max + 1, channel_removal)
        order = np.lexsort((channel_score, sort_step), axis=1).astype(np.int16)
        removal_sorted = np.take_along_axis(channel_removal, order, 1)
        last_kept = np.where(removal_sorted < 0, t_max, removal_sorted - 1)  # what the hover says, not a code
        custom = np.stack(
            [order.astype(np.float32), last_kept.astype(np.float32), np.take_along_axis(channel_score, order, 1)],
            axis=-1,
        )
        param_rows = [space.linear_params_per_layer(traj.keep_mask(t)) for t in range(t_max + 1)]
        return cls(
            key=traj.key,
            path=str(traj.path) if traj.path else "",
            model=str(traj.meta.get("model", {}).get("id", "")),
            method=str(traj.meta.get("method", "gisp")),
            objective=str(traj.meta.get("objective", {}).get("objective", "")),
            head_unit="query head" if traj.gqa == "query" else "KV group",
            num_steps=t_max,
            protected_layers=list(traj.meta.get("settings", {}).get("protected_layers", [])),
            param_sparsity=np.array([r.param_sparsity for r in traj.steps]),
            structural_ratio=np.array([r.structural_ratio for r in traj.steps]),
            loss=np.array([r.loss for r in traj.steps]),
            kept_params=np.array([r.kept_params for r in traj.steps], dtype=np.int64),
            total_params=int(space.total_linear_params()),
            head_removal=head_removal,
            head_score=head_score,
            channel_removal=channel_removal,
            channel_order=order,
            channel_removal_sorted=removal_sorted,
            channel_custom_sorted=custom,
            head_kept=_kept_per_step(head_removal, t_max),
            channel_kept=_kept_per_step(channel_removal, t_max),
            params_per_layer=np.stack(param_rows).astype(np.int64),
        )

    def step_label(self, step: int) -> str:
        return f"{self.param_sparsity[step]:.1%} params (step {step})"

    def at(self, step: int) -> StepView:
        """The chosen point: a threshold on the removal steps, nothing recomputed."""
        if not 0 <= step <= self.num_steps:
            raise GispError(f"step {step} is outside this trajectory's steps 0..{self.num_steps}")
        return StepView(
            step=step,
            param_sparsity=float(self.param_sparsity[step]),
            structural_ratio=float(self.structural_ratio[step]),
            loss=float(self.loss[step]),
            head_z=removed_by(self.head_removal, step),
            channel_z=removed_by(self.channel_removal_sorted, step),
            head_kept_fraction=self.head_kept[step] / self.head_units,
            channel_kept_fraction=self.channel_kept[step] / self.channels,
            kept_params_per_layer=self.params_per_layer[step],
            kept_heads=int(self.head_kept[step].sum()),
            kept_channels=int(self.channel_kept[step].sum()),
            kept_params=int(self.kept_params[step]),
            total_params=self.total_params,
        )

    def channel_bins(self, step: int, bins: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Kept fraction of channels in ``bins`` consecutive groups (original order): (L, bins), bin starts."""
        bins = max(1, min(bins, self.channels))
        edges = np.linspace(0, self.channels, bins + 1).round().astype(int)
        kept = (removed_by(self.channel_removal, step) == 0).astype(np.float32)
        sums = np.add.reduceat(kept, edges[:-1], axis=1)
        return sums / np.diff(edges), edges[:-1]

    def layer_table(self, step: int) -> dict[str, np.ndarray]:
        """Per layer at ``step``: kept head units, channels and parameters (for a table)."""
        return {
            "layer": np.arange(self.num_layers),
            f"{self.head_unit}s kept": self.head_kept[step],
            "channels kept": self.channel_kept[step],
            "parameters kept": self.params_per_layer[step],
            "protected": np.isin(np.arange(self.num_layers), self.protected_layers),
        }


def removed_by(removal: np.ndarray, step: int) -> np.ndarray:
    """Removal step where a structure is gone at ``step``, 0 where it is still there."""
    return np.where((removal > 0) & (removal <= step), removal, 0).astype(np.int16)


def _kept_per_step(removal: np.ndarray, t_max: int) -> np.ndarray:
    """(T+1, L): structures of each layer still there after each step."""
    layers, width = removal.shape
    removed = np.zeros((layers, t_max + 1), np.int64)
    rows, cols = np.nonzero(removal > 0)
    np.add.at(removed, (rows, removal[rows, cols].astype(np.int64)), 1)
    return (width - np.cumsum(removed, axis=1)).T


# ---- two trajectories ----------------------------------------------------------------------
def check_comparable(a: Trajectory, b: Trajectory) -> None:
    """Two trajectories can be compared structure by structure only on the same model and units."""
    wa = a.meta.get("model", {}).get("weights_sha256")
    wb = b.meta.get("model", {}).get("weights_sha256")
    if wa != wb:
        raise GispError(
            f"the trajectories were built for different models ({a.meta.get('model', {}).get('id')!r} and "
            f"{b.meta.get('model', {}).get('id')!r}): choose two of the same model"
        )
    if a.geometry != b.geometry or a.gqa != b.gqa:
        raise GispError(
            f"the trajectories count heads differently (GQA policy {a.gqa!r} and {b.gqa!r}): "
            "choose two with the same --gqa policy"
        )


def _jaccard(ka: np.ndarray, kb: np.ndarray) -> float:
    union = int((ka | kb).sum())
    return float((ka & kb).sum()) / union if union else 1.0


@dataclass
class JaccardCurve:
    sparsity: np.ndarray  # parameter sparsity points: steps of either trajectory that the other matches
    step_a: np.ndarray  # step of A nearest each point
    step_b: np.ndarray
    sparsity_a: np.ndarray  # the parameter sparsity those steps actually have
    sparsity_b: np.ndarray
    all: np.ndarray  # Jaccard index of the kept sets: all structures, heads, channels
    heads: np.ndarray
    channels: np.ndarray


def jaccard_curve(a: Trajectory, b: Trajectory, tolerance: float = 0.05) -> JaccardCurve:
    """Overlap of the kept sets of A and B across parameter sparsity.

    At every step's sparsity of either trajectory, each is taken at its step nearest that
    sparsity (how papers pick their 20/30/40/50% models). A pair is kept only where the two
    steps' parameter sparsities are within ``tolerance`` of each other: comparing a sparser
    set with a denser one would measure the sparsity gap, not the choice of structures. So a
    one-shot trajectory meets an iterative one at the dense model and at its single point.
    """
    check_comparable(a, b)
    points = sorted({round(r.param_sparsity, 9) for t in (a, b) for r in t.steps})
    is_head = a.space.kind == 0
    rows, seen = [], set()
    for p in points:
        sa, sb = a.step_nearest_sparsity(p), b.step_nearest_sparsity(p)
        pa, pb = a.steps[sa].param_sparsity, b.steps[sb].param_sparsity
        if (sa, sb) in seen or abs(pa - pb) > tolerance:
            continue
        seen.add((sa, sb))
        ka, kb = a.keep_mask(sa), b.keep_mask(sb)
        rows.append(
            (
                p,
                sa,
                sb,
                pa,
                pb,
                _jaccard(ka, kb),
                _jaccard(ka[is_head], kb[is_head]),
                _jaccard(ka[~is_head], kb[~is_head]),
            )
        )
    cols = list(zip(*rows))
    return JaccardCurve(*(np.array(c) for c in cols))


DIFF_LABELS = ("kept in both", "kept only in A", "kept only in B", "removed in both")


@dataclass
class Difference:
    step_a: int
    step_b: int
    head_code: np.ndarray  # (L, H) int8, index into DIFF_LABELS
    channel_code: np.ndarray  # (L, C) int8, columns sorted by code within each layer
    channel_index: np.ndarray  # (L, C) original channel index of each sorted column
    counts: dict[str, int]
    jaccard: float


def difference(a: Trajectory, b: Trajectory, step_a: int, step_b: int) -> Difference:
    """Which structures A and B keep at their chosen steps (codes 0..3, see ``DIFF_LABELS``)."""
    check_comparable(a, b)
    ka, kb = a.keep_mask(step_a), b.keep_mask(step_b)
    code = np.where(ka & kb, 0, np.where(ka, 1, np.where(kb, 2, 3))).astype(np.int8)
    head_code, channel_code = a.space.as_grid(code)
    order = np.argsort(channel_code, axis=1, kind="stable")
    return Difference(
        step_a=step_a,
        step_b=step_b,
        head_code=head_code,
        channel_code=np.take_along_axis(channel_code, order, 1),
        channel_index=order.astype(np.int16),
        counts={label: int((code == i).sum()) for i, label in enumerate(DIFF_LABELS)},
        jaccard=_jaccard(ka, kb),
    )
