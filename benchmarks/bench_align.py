"""Aligned MLP widths: what rounding every layer's MLP width to a multiple of N costs in quality, and gains in speed.

On the 10-step example (``cache/examples/smollm2-135m-ppl-iterative``, the embedded SmolLM2-135M), for
N = 32, 64, 128, at the steps nearest 22/32/43/53% of parameters, three kinds of point:

  unaligned    the example's own point
  export N     the same point, every layer's MLP width rounded afterwards in the trajectory's order
               (``export.widths.aligned_keep_mask``, what ``gisp export --align N`` writes)
  prune N      the step nearest the same parameter sparsity of a trajectory pruned with ``--align N``
               (the example's settings otherwise; pruned here once, then answered from the cache)
  re-pruned    the step nearest of the example's settings pruned again here, without --align (same key as
               the example): how far two runs of the same settings land apart, the noise floor of "prune N"

Quality: WikiText-2 perplexity, 120 non-overlapping windows of 128 tokens (the setting of the example's
shipped evaluations). Speed: one column group per runtime (``RUNTIMES``). PyTorch: prefill (1 x 512 tokens)
and decode (32 tokens after 16) of the physically sliced models, float32 on the CPU, 1 thread, through
``gisp_engine.evaluation.cost.measure_costs``: every model of one target and the dense model in one call, their repeats
interleaved (``speed_groups``); the table shows the median of the repeats' ratios to dense and [lowest,
highest] (``cost.cost_ratios``).

Adding a runtime (llama.cpp): write ``def llamacpp_speed(points, dense, args, store) -> dict[str, Speed]``
(one ``Speed`` per ``Point.id``, measured against dense in that runtime, e.g. each point's GGUF written from
``Point.trajectory``/``step``/``keep``; remember each group in ``store`` as ``pytorch_speed`` does) and add it
to ``RUNTIMES``; the table grows its columns and the JSON its entries.

Every figure is remembered in ``results/bench_align_points.json`` as soon as it is measured: a rerun (after an
interruption, or with another part) computes only what is missing. The unaligned points and the dense model
take their perplexity from the example's shipped evaluations (same setting) unless ``--recompute-shipped``.

    python benchmarks/bench_align.py                       # everything (about 1-2 h on 2 busy cores)
    python benchmarks/bench_align.py --part quality        # perplexity only
    python benchmarks/bench_align.py --aligns 64 --targets 0.32
"""

from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, machine, table, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "cache" / "examples" / "smollm2-135m-ppl-iterative"


@dataclass
class Point:
    """One subnetwork measured: which trajectory, which step, and how its widths were aligned."""

    id: str
    target: float  # the parameter sparsity asked for
    kind: str  # unaligned | export | prune
    align: int | None
    trajectory: object  # gisp_engine.pruning.trajectory.Trajectory
    step: int
    keep: np.ndarray = field(repr=False)
    param_sparsity: float = 0.0
    structural_ratio: float = 0.0
    widths: list[int] = field(default_factory=list)  # MLP channels per layer

    @property
    def ident(self) -> str:
        """What identifies the subnetwork (not the target that picked it)."""
        how = f"export{self.align}" if self.kind == "export" else "as pruned"
        # the key names the settings; two runs of the same settings may differ (re-pruned): their removal steps too
        digest = hashlib.sha256(self.trajectory.removal_step.tobytes()).hexdigest()[:12]
        return f"{self.trajectory.key}:{digest}@{self.step} {how}"

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "target": self.target,
            "kind": self.kind,
            "align": self.align,
            "trajectory": self.trajectory.key,
            "step": self.step,
            "param_sparsity": self.param_sparsity,
            "structural_ratio": self.structural_ratio,
            "widths": self.widths,
        }


@dataclass
class Speed:
    """Speed-ups against dense in one runtime: median and [lowest, highest] over the repeats."""

    prefill: float
    prefill_low: float
    prefill_high: float
    decode: float
    decode_low: float
    decode_high: float
    detail: dict = field(default_factory=dict)


# ---- the points ---------------------------------------------------------------------------------
def aligned_trajectory(example, align: int | None):
    """The example's settings with ``--align``: pruned once (minutes), then answered from the cache.

    ``align=None`` prunes the example's own settings again, in a cache of this benchmark's
    (``results/bench_align_cache``): it has the example's key, and must not stand in the project cache
    for the example (remembered evaluations are filed by key).
    """
    import os

    from gisp_engine import PruneConfig, prune
    from gisp_engine.core.progress import TqdmProgress
    from gisp_engine.core.settings import cache_dir

    saved = os.environ.get("GISP_CACHE_DIR")
    if align is None:
        own = RESULTS / "bench_align_cache"
        (own / "models").mkdir(parents=True, exist_ok=True)
        for model in (cache_dir() / "models").iterdir():
            if model.is_dir() and not (own / "models" / model.name).exists():
                (own / "models" / model.name).symlink_to(model.resolve(), target_is_directory=True)
        os.environ["GISP_CACHE_DIR"] = str(own)
    bar = TqdmProgress()
    try:
        outcome = prune(PruneConfig.from_settings({**example.meta["settings"], "align": align}), progress=bar)
    finally:
        bar.close()
        if align is None and saved is None:
            os.environ.pop("GISP_CACHE_DIR", None)
        elif align is None:
            os.environ["GISP_CACHE_DIR"] = saved
    print(
        f"--align {align or 'off'}: {outcome.trajectory.key} ({'cache' if outcome.cache_hit else 'pruned now'}, "
        f"{outcome.trajectory.meta['wall_time_s']:.0f} s to prune)"
    )
    return outcome.trajectory


def make_point(pid, target, kind, align, traj, step, keep) -> Point:
    space = traj.space
    widths = space.as_grid(keep)[1].sum(1).astype(int).tolist()
    return Point(
        pid, target, kind, align, traj, step, keep, space.param_sparsity(keep), float(1.0 - keep.mean()), widths
    )


def build_points(example, aligns: list[int], aligned: dict, targets: list[float], repruned=None) -> list[Point]:
    from gisp_engine.export.widths import aligned_keep_mask

    points = []
    for target in targets:
        step = example.step_nearest_sparsity(target)
        points.append(
            make_point(f"{target:.2f}/unaligned", target, "unaligned", None, example, step, example.keep_mask(step))
        )
        for n in aligns:
            points.append(
                make_point(
                    f"{target:.2f}/export{n}", target, "export", n, example, step, aligned_keep_mask(example, step, n)
                )
            )
        for n, traj in aligned.items():
            own = traj.step_nearest_sparsity(target)
            points.append(make_point(f"{target:.2f}/prune{n}", target, "prune", n, traj, own, traj.keep_mask(own)))
        if repruned is not None:
            own = repruned.step_nearest_sparsity(target)
            points.append(
                make_point(f"{target:.2f}/repruned", target, "re-pruned", None, repruned, own, repruned.keep_mask(own))
            )
    return points


def sliced(dense, point: Point):
    """A physically sliced copy of the dense model at ``point``."""
    from gisp_engine.model.surgery import full_layout, slice_

    model = copy.deepcopy(dense.model)
    slice_(model, dense.adapter, point.trajectory.space, full_layout(point.trajectory.space), point.keep)
    return model


# ---- quality --------------------------------------------------------------------------------------
def perplexities(dense, points: list[Point], args, store: "Store") -> dict[str, float]:
    """Each point's perplexity: remembered in ``store``, else computed (and remembered at once)."""
    from gisp_engine.evaluation.evaluate import evaluate_task

    out = {}
    for i, point in enumerate(points):
        ident = f"{point.ident}|wikitext2 {args.windows}x{args.seq_len}"
        if ident not in store.data["perplexity"]:
            start = time.perf_counter()
            model = sliced(dense, point)
            result = evaluate_task(
                model, dense.tokenizer, "wikitext2", limit=args.windows, seq_len=args.seq_len, batch_size=8
            )
            store.put("perplexity", ident, float(result.perplexity))
            print(
                f"  [{i + 1}/{len(points)}] {point.id}: step {point.step}, params {point.param_sparsity:.4f}, "
                f"ppl {result.perplexity:.2f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
            del model
            gc.collect()
        out[point.id] = store.data["perplexity"][ident]
    return out


class Store:
    """Every figure measured so far (``results/bench_align_points.json``): a rerun computes only what is missing.

    Several runs may share it (quality and speed side by side): each write merges into the file under a lock.
    """

    def __init__(self, path: Path):
        self.path = path
        self.data = self._read()

    def _read(self) -> dict:
        data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        data.setdefault("perplexity", {})
        data.setdefault("speed", {})
        return data

    def put(self, section: str, ident: str, value) -> None:
        from gisp_engine.core.fsutil import atomic_write_json, file_lock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.path.with_suffix(".lock"), what="the benchmark's results"):
            data = self._read()
            data[section][ident] = value
            atomic_write_json(self.path, data)
        self.data = data


def shipped_perplexities(example, args) -> dict[int, float]:
    """The example's own WikiText-2 evaluations in this setting (``evaluations.json``), by step."""
    shipped = {}
    path = Path(example.path) / "evaluations.json"
    if path.is_file():
        for r in json.loads(path.read_text())["results"]:
            ident = r["identity"]
            if (
                r["task"] == "wikitext2"
                and ident["limit"] == args.windows
                and ident["options"].get("seq_len") == args.seq_len
            ):
                shipped[int(r["step"])] = float(r["value"])
    return shipped


# ---- speed, one function per runtime ---------------------------------------------------------------
def speed_groups(points: list[Point]) -> list[list[Point]]:
    """What is timed together (with dense, repeats interleaved): per target, the example's points (unaligned and
    export N), then the pruned ones (prune N, re-pruned) with the unaligned point again as their reference."""
    groups = []
    for target in dict.fromkeys(p.target for p in points):
        here = [p for p in points if p.target == target]
        example = [p for p in here if p.kind in ("unaligned", "export")]
        pruned = [p for p in here if p.kind not in ("unaligned", "export")]
        groups += ([example] if len(example) > 1 else []) + ([[here[0], *pruned]] if pruned else [])
    return groups


def pytorch_speed(points: list[Point], dense, args, store: Store) -> dict[str, Speed]:
    """PyTorch eager on the CPU: each group's models with dense in one ``measure_costs`` call (repeats interleaved).

    The unaligned point is timed in both groups of its target: its first timing stands in the table."""
    from gisp_engine.evaluation.cost import CostSpec, cost_ratios, measure_costs

    spec = CostSpec(
        batch=1,
        seq_len=args.prefill_tokens,
        prompt_len=16,
        new_tokens=args.decode_tokens,
        repeats=args.repeats,
        threads=args.threads,
    )
    setting = (
        f"pytorch 1x{args.prefill_tokens} prefill, {args.decode_tokens} decode, {args.repeats} repeats, "
        f"{args.threads} threads"
    )
    memo = store.data["speed"]
    out = {}
    for group in speed_groups(points):
        key = f"{setting}|" + ",".join(p.ident for p in group)  # measured together, with dense
        if key in memo:
            for p in group:
                out.setdefault(p.id, Speed(**memo[key][p.ident]))
            continue
        models = [sliced(dense, p) for p in group]
        start = time.perf_counter()
        costs = measure_costs([dense.model, *models], spec)
        print(
            f"  speed: {', '.join(p.id for p in group)} and dense, {args.repeats} interleaved repeats "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        base = costs[0].to_dict()
        measured = {}
        for p, cost in zip(group, costs[1:]):
            r = cost_ratios(cost.to_dict(), base)
            measured[p.ident] = Speed(
                r["prefill_speedup"],
                r["prefill_speedup_low"],
                r["prefill_speedup_high"],
                r["decode_speedup"],
                r["decode_speedup_low"],
                r["decode_speedup_high"],
                {"cost": cost.to_dict(), "dense": base, "ratios": r},
            )
            out.setdefault(p.id, measured[p.ident])
        store.put("speed", key, {ident: asdict(speed) for ident, speed in measured.items()})
        del models
        gc.collect()
    return out


RUNTIMES: dict[str, Callable[[list[Point], object, argparse.Namespace, Store], dict[str, Speed]]] = {
    "pytorch": pytorch_speed,
    # "llamacpp": llamacpp_speed,  # the llama.cpp cost sweep adds its column here
}


# ---- report ---------------------------------------------------------------------------------------------
def schedule_fidelity(aligned: dict) -> list[list]:
    """How far each aligned trajectory's steps land from the schedule's structural ratio."""
    from gisp_engine.pruning.config import target_ratios

    rows = []
    for n, traj in aligned.items():
        s = traj.meta["settings"]
        wanted = [0.0, *target_ratios(s["schedule"], s["max_sparsity"], s["steps"])]
        gaps = [r.structural_ratio - w for r, w in zip(traj.steps, wanted)]
        rows.append([n, traj.key, min(gaps), max(gaps), statistics.mean(abs(g) for g in gaps[1:])])
    return rows


def spread(s: Speed | None, what: str) -> str:
    if s is None:
        return "-"
    return f"{getattr(s, what):.2f}x [{getattr(s, what + '_low'):.2f}, {getattr(s, what + '_high'):.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trajectory", default=str(EXAMPLE))
    ap.add_argument("--aligns", default="32,64,128")
    ap.add_argument("--targets", default="0.22,0.32,0.43,0.53", help="parameter sparsities")
    ap.add_argument("--windows", type=int, default=120)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--no-reprune", action="store_true", help="leave out the re-pruned unaligned point")
    ap.add_argument("--export-only", action="store_true", help="only the example's points (nothing to prune)")
    ap.add_argument(
        "--kinds",
        default="export,prune,re-pruned",
        help="which points besides the unaligned one (runs side by side can share the work)",
    )
    ap.add_argument(
        "--recompute-shipped",
        action="store_true",
        help="evaluate the example's points again instead of taking its shipped evaluations",
    )
    ap.add_argument("--part", choices=["all", "quality", "speed"], default="all")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"speed columns: {', '.join(RUNTIMES)}")
    ap.add_argument("--threads", type=int, default=1, help="threads of the speed measurement")
    ap.add_argument("--prefill-tokens", type=int, default=512)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timings (median, and the spread of ratios)")
    args = ap.parse_args()

    from gisp_engine.model.loading import load_model
    from gisp_engine.pruning.subnetwork import recorded_model
    from gisp_engine.pruning.trajectory import Trajectory

    example = Trajectory.load(args.trajectory)
    aligns = [int(n) for n in args.aligns.split(",")]
    targets = [float(t) for t in args.targets.split(",")]
    # --export-only: no trajectory to prune (the export-aligned points need only the example)
    aligned = {} if args.export_only else {n: aligned_trajectory(example, n) for n in aligns}
    repruned = None if args.no_reprune or args.export_only else aligned_trajectory(example, None)
    kinds = set(args.kinds.split(",")) | {"unaligned"}
    points = [p for p in build_points(example, aligns, aligned, targets, repruned) if p.kind in kinds]
    dense = load_model(recorded_model(example), "cpu", "float32")  # the dtype of the shipped evaluations
    result = {
        "machine": machine(),
        "trajectory": example.key,
        "settings": vars(args),
        "repruned_differs_from_example": None
        if repruned is None
        else int((repruned.removal_step != example.removal_step).sum()),
        "points": [p.to_dict() for p in points],
    }

    fidelity = schedule_fidelity(aligned)
    print("\n" + table(fidelity, ["N", "trajectory", "min gap", "max gap", "mean |gap|"]))
    print("gap: a step's structural ratio minus the schedule's (steps 1..10)")
    result["schedule_gaps"] = [dict(zip(["align", "key", "min", "max", "mean_abs"], r)) for r in fidelity]

    store = Store(RESULTS / "bench_align_points.json")
    shipped = shipped_perplexities(example, args)
    ppl: dict[str, float] = {}
    if args.part in ("all", "quality"):
        print(f"\nWikiText-2 perplexity ({args.windows} windows of {args.seq_len} tokens)", flush=True)
        dense_point = make_point("dense", 0.0, "dense", None, example, 0, example.keep_mask(0))
        if not args.recompute_shipped:  # the example's own evaluations answer its points
            for p in [dense_point, *points]:
                ident = f"{p.ident}|wikitext2 {args.windows}x{args.seq_len}"
                if (
                    p.trajectory is example
                    and p.kind in ("unaligned", "dense")
                    and p.step in shipped
                    and ident not in store.data["perplexity"]
                ):
                    store.put("perplexity", ident, shipped[p.step])
        ppl = perplexities(dense, [dense_point, *points], args, store)
        result["dense_perplexity"] = ppl.pop("dense")
        result["perplexity"] = ppl
        result["shipped_unaligned_perplexity"] = shipped

    speeds: dict[str, dict[str, Speed]] = {}
    if args.part in ("all", "speed"):
        for name in args.runtimes.split(","):
            print(f"\n{name} speed-ups against dense", flush=True)
            speeds[name] = RUNTIMES[name](points, dense, args, store)
        result["speed"] = {name: {pid: asdict(s) for pid, s in got.items()} for name, got in speeds.items()}

    # the table: everything measured so far for these points, whichever part ran now
    remembered = store.data["perplexity"]
    ppl = {
        p.id: remembered[f"{p.ident}|wikitext2 {args.windows}x{args.seq_len}"]
        for p in points
        if f"{p.ident}|wikitext2 {args.windows}x{args.seq_len}" in remembered
    }
    header = ["params asked", "point", "step", "params", "MLP widths (min-max)", "ppl", "ppl vs unaligned"]
    for name in speeds:
        header += [f"{name} prefill", f"{name} decode"]
    rows = []
    for p in points:
        base = next(q for q in points if q.target == p.target and q.kind == "unaligned")
        cut = [w for w in p.widths if w < example.geometry.intermediate_size] or p.widths
        row = [
            f"{p.target:.0%}",
            p.kind if p.align is None else f"{p.kind} {p.align}",
            p.step,
            f"{p.param_sparsity:.1%}",
            f"{min(cut)}-{max(cut)}",
            f"{ppl[p.id]:.1f}" if p.id in ppl else "-",
            f"{ppl[p.id] / ppl[base.id]:.3f}x" if p.id in ppl else "-",
        ]
        for got in speeds.values():
            row += [spread(got.get(p.id), "prefill"), spread(got.get(p.id), "decode")]
        rows.append(row)
    print("\n" + table(rows, header))
    if "dense_perplexity" in result:
        print(f"dense perplexity {result['dense_perplexity']:.2f}")
    print(f"results: {write_result('bench_align', result)}")


if __name__ == "__main__":
    main()
