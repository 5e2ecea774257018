"""Why a structure was removed: its score, rank and the cut line at every step; how far the ranking drifts from
the dense one; the scores a step ranked; what a head attends to.

Everything but the attention pattern reads the trajectory's ``scores`` (every step's normalised scores, kept by
default): row ``t - 1`` is what step ``t`` ranked, measured on the model after ``t - 1`` steps, NaN for
structures not scored then (protected, or already removed). Step ``t`` removes the lowest of them; the *cut
line* of step ``t`` is the highest score it removed. No torch is imported except for attention.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field

import numpy as np

from ..core.errors import GispError
from ..model.structures import KINDS
from ..pruning.trajectory import Trajectory

NO_SCORES = (
    "this trajectory was saved without every step's scores (made with --no-save-scores, or before scores "
    "were kept by default): run it again with the same settings, `gisp prune ... --save-scores --no-cache`"
)


def _scores(traj: Trajectory) -> np.ndarray:
    if traj.scores is None:
        raise GispError(NO_SCORES)
    return traj.scores


def structure_id(traj: Trajectory, spec: str | tuple) -> int:
    """``"LAYER:KIND:INDEX"`` (``25:head:2``, ``12:channel:801``) or a (layer, kind, index) tuple -> structure id."""
    parts = spec.split(":") if isinstance(spec, str) else list(spec)
    if len(parts) != 3:
        raise GispError(f"structure {spec!r}: write LAYER:KIND:INDEX, e.g. 3:head:2 or 12:channel:801")
    layer, kind, index = parts
    kind = str(kind).strip().lower()
    if kind not in KINDS:
        raise GispError(f"structure {spec!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
    try:
        layer, index = int(layer), int(index)
    except (TypeError, ValueError):
        raise GispError(f"structure {spec!r}: layer and index must be whole numbers") from None
    g, space = traj.geometry, traj.space
    if not 0 <= layer < g.num_layers:
        raise GispError(f"structure {spec!r}: layer {layer} is outside 0..{g.num_layers - 1}")
    width = space.head_units if kind == "head" else g.intermediate_size
    if not 0 <= index < width:
        unit = "head unit" if kind == "head" else "channel"
        raise GispError(f"structure {spec!r}: {unit} {index} is outside 0..{width - 1} of layer {layer}")
    return space.id(layer, kind, index)


def _cut_lines(traj: Trajectory, scores: np.ndarray) -> np.ndarray:
    """(T,): the highest score each step removed (NaN where a step removed nothing it had scored)."""
    t_max = traj.num_steps
    cut = np.full(t_max, np.nan, np.float32)
    removed = traj.removal_step
    for t in range(1, min(t_max, scores.shape[0]) + 1):
        values = scores[t - 1, removed == t]
        values = values[np.isfinite(values)]
        if len(values):
            cut[t - 1] = values.max()
    return cut


# ---- one structure's story -------------------------------------------------------------------
@dataclass
class StructureHistory:
    """One structure across the steps. Arrays have one entry per pruning step t = 1..T."""

    layer: int
    kind: str
    index: int
    removal_step: int  # -1: never removed
    protected: bool
    steps: np.ndarray  # 1..T
    score: np.ndarray  # its normalised score ranked at step t (NaN: not scored then)
    rank: np.ndarray  # from the bottom among the structures scored at step t (1 = the lowest, the first to go)
    scored: np.ndarray  # how many structures step t scored (the remaining unprotected ones)
    removed: np.ndarray  # how many step t removed
    cut: np.ndarray  # the cut line: the highest score step t removed

    @property
    def name(self) -> str:
        return f"{self.layer}:{self.kind}:{self.index}"

    def to_dict(self) -> dict:
        rows = []
        for i, t in enumerate(self.steps):
            rows.append(
                {
                    "step": int(t),
                    "score": None if np.isnan(self.score[i]) else float(self.score[i]),
                    "rank": None if np.isnan(self.rank[i]) else int(self.rank[i]),
                    "scored": int(self.scored[i]),
                    "removed": int(self.removed[i]),
                    "cut_line": None if np.isnan(self.cut[i]) else float(self.cut[i]),
                    "removed_here": int(t) == self.removal_step,
                }
            )
        return {
            "structure": self.name,
            "layer": self.layer,
            "kind": self.kind,
            "index": self.index,
            "removal_step": self.removal_step,
            "protected": self.protected,
            "rank_order": "1 = the lowest score among those scored at the step (the first to go)",
            "steps": rows,
        }

    def text(self) -> str:
        when = (
            "in a protected layer: never scored, never removed"
            if self.protected
            else "never removed"
            if self.removal_step < 0
            else f"removed at step {self.removal_step}"
        )
        lines = [
            f"structure {self.name}: {when}",
            f"{'step':>4}  {'score':>10}  {'rank (1 = lowest)':>20}  {'cut line':>10}  removed",
        ]
        for row in self.to_dict()["steps"]:
            score = "-" if row["score"] is None else f"{row['score']:.4g}"
            rank = "-" if row["rank"] is None else f"{row['rank']} of {row['scored']}"
            cut = "-" if row["cut_line"] is None else f"{row['cut_line']:.4g}"
            mark = "removed here" if row["removed_here"] else ""
            lines.append(f"{row['step']:>4}  {score:>10}  {rank:>20}  {cut:>10}  {mark}")
        return "\n".join(lines)


def structure_history(traj: Trajectory, spec: str | tuple | int) -> StructureHistory:
    """Score, rank among the remaining structures and cut line of one structure at every step."""
    scores = _scores(traj)
    sid = int(spec) if isinstance(spec, (int, np.integer)) else structure_id(traj, spec)
    layer, kind, index = traj.name(sid)
    t_max = traj.num_steps
    own = scores[:, sid]
    valid = np.isfinite(scores)
    below = (scores < own[:, None]) & valid  # NaN compares False: an unscored row counts nothing
    rank = np.where(np.isfinite(own), below.sum(axis=1) + 1, np.nan).astype(np.float64)
    protected_layers = traj.meta.get("settings", {}).get("protected_layers", [])
    removed = np.array([(traj.removal_step == t).sum() for t in range(1, t_max + 1)], np.int64)
    return StructureHistory(
        layer=layer,
        kind=kind,
        index=index,
        removal_step=int(traj.removal_step[sid]),
        protected=layer in protected_layers,
        steps=np.arange(1, t_max + 1),
        score=own.astype(np.float64),
        rank=rank,
        scored=valid.sum(axis=1),
        removed=removed,
        cut=_cut_lines(traj, scores).astype(np.float64),
    )


# ---- the scores of one step ------------------------------------------------------------------
@dataclass
class StepScores:
    """What step ``step`` ranked: every structure it scored, and its cut line."""

    step: int  # 1..T
    layer: np.ndarray
    kind: np.ndarray  # 0 head, 1 channel
    score: np.ndarray
    removed_here: np.ndarray  # bool: removed at this step
    cut: float  # NaN where the step removed nothing it scored

    def per_layer(self, kind: int) -> dict[str, np.ndarray]:
        """Box statistics of one kind's scores per layer (layers it scored only): the figure draws these."""
        layers, q1, med, q3, lo, hi, count, below = ([] for _ in range(8))
        mine = self.kind == kind
        for layer in np.unique(self.layer[mine]):
            v = self.score[mine & (self.layer == layer)]
            a, m, b = np.percentile(v, [25, 50, 75])
            layers.append(int(layer))
            q1.append(a), med.append(m), q3.append(b), lo.append(v.min()), hi.append(v.max()), count.append(len(v))
            below.append(int(self.removed_here[mine & (self.layer == layer)].sum()))
        return {
            "layer": np.array(layers, int),
            "q1": np.array(q1),
            "median": np.array(med),
            "q3": np.array(q3),
            "min": np.array(lo),
            "max": np.array(hi),
            "count": np.array(count, int),
            "removed": np.array(below, int),
        }

    def to_dict(self) -> dict:
        kinds = {}
        for kind, name in enumerate(KINDS):
            stats = self.per_layer(kind)
            kinds[name] = [
                {
                    "layer": int(stats["layer"][i]),
                    "count": int(stats["count"][i]),
                    "removed": int(stats["removed"][i]),
                    **{k: float(stats[k][i]) for k in ("min", "q1", "median", "q3", "max")},
                }
                for i in range(len(stats["layer"]))
            ]
        return {
            "step": self.step,
            "scored": int(len(self.score)),
            "removed": int(self.removed_here.sum()),
            "cut_line": None if np.isnan(self.cut) else self.cut,
            "per_layer": kinds,
        }

    def text(self) -> str:
        payload = self.to_dict()
        cut = "-" if payload["cut_line"] is None else f"{payload['cut_line']:.4g}"
        lines = [
            f"step {self.step} ranked {payload['scored']} structures and removed the lowest {payload['removed']} "
            f"(cut line {cut})",
            f"{'layer':>5}  {'kind':<7}  {'count':>6}  {'removed':>7}  {'min':>9}  {'median':>9}  {'max':>9}",
        ]
        for name, rows in payload["per_layer"].items():
            for r in rows:
                lines.append(
                    f"{r['layer']:>5}  {name:<7}  {r['count']:>6}  {r['removed']:>7}  {r['min']:9.3g}  "
                    f"{r['median']:9.3g}  {r['max']:9.3g}"
                )
        return "\n".join(lines)


def step_scores(traj: Trajectory, step: int) -> StepScores:
    """The scores step ``step`` (1..T) ranked, measured on the model after ``step - 1`` steps."""
    scores = _scores(traj)
    if not isinstance(step, (int, np.integer)) or not 1 <= step <= traj.num_steps:
        raise GispError(f"step {step}: scores exist for the pruning steps 1..{traj.num_steps}")
    row = scores[step - 1]
    where = np.flatnonzero(np.isfinite(row))
    removed_here = traj.removal_step[where] == step
    values = row[where]
    cut = float(values[removed_here].max()) if removed_here.any() else float("nan")
    return StepScores(
        step=int(step),
        layer=traj.space.layer[where],
        kind=traj.space.kind[where],
        score=values,
        removed_here=removed_here,
        cut=cut,
    )


# ---- how stale a one-shot ranking gets -------------------------------------------------------
def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (as Spearman's correlation needs them)."""
    values = np.asarray(values)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson's correlation of the average ranks (NaN below two values)."""
    if len(a) < 2:
        return float("nan")
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


@dataclass
class RankStability:
    """Per pruning step t = 1..T: how the ranking step t used relates to the dense model's."""

    steps: np.ndarray
    spearman: np.ndarray  # step t's scores vs the dense scores, over the structures step t scored
    jaccard: np.ndarray  # removed by step t vs the same count of the dense ranking's lowest
    removed: np.ndarray  # structures removed by step t
    fixed: bool  # the method ranks once: both are 1 by construction
    reason: str = ""  # why it is fixed, in words
    method: str = "gisp"
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        rows = [
            {
                "step": int(t),
                "spearman": None if np.isnan(s) else float(s),
                "jaccard": None if np.isnan(j) else float(j),
                "removed": int(r),
            }
            for t, s, j, r in zip(self.steps, self.spearman, self.jaccard, self.removed)
        ]
        out = {"method": self.method, "fixed_ranking": self.fixed, "steps": rows, "notes": self.notes}
        if self.fixed:
            out["reason"] = self.reason
        return out

    def text(self) -> str:
        if self.fixed:
            return f"rank stability: {self.reason}"
        lines = [
            "rank stability against the dense ranking (step 1 ranks the dense model)",
            f"{'step':>4}  {'removed':>8}  {'Spearman':>9}  {'Jaccard':>8}",
        ]
        for row in self.to_dict()["steps"]:
            s = "-" if row["spearman"] is None else f"{row['spearman']:.4f}"
            j = "-" if row["jaccard"] is None else f"{row['jaccard']:.4f}"
            lines.append(f"{row['step']:>4}  {row['removed']:>8}  {s:>9}  {j:>8}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def fixed_ranking_reason(traj: Trajectory) -> str:
    """Why a trajectory's later steps cannot differ from its dense ranking ("" when they can)."""
    method = str(traj.meta.get("method", "gisp"))
    if traj.num_steps == 1:
        return (
            "one step (one-shot): the only ranking is the dense one, so Spearman and Jaccard are 1.0 by "
            "construction; compare with an iterative trajectory instead"
        )
    if str(traj.meta.get("ranking", "")).startswith("fixed ranking"):
        return (
            f"{method} ranks once, on the dense model: every step cuts the same order, so Spearman and Jaccard "
            "are 1.0 by construction (not a finding)"
        )
    return ""


def rank_stability(traj: Trajectory) -> RankStability:
    """Spearman's correlation of each step's scores with the dense ones (over the structures that step scored), and
    the Jaccard index of what the trajectory removed by step t with the dense ranking's lowest at the same count."""
    scores = _scores(traj)
    t_max, method = traj.num_steps, str(traj.meta.get("method", "gisp"))
    steps = np.arange(1, t_max + 1)
    removed = np.array([((traj.removal_step > 0) & (traj.removal_step <= t)).sum() for t in steps], np.int64)
    reason = fixed_ranking_reason(traj)
    if reason:
        ones = np.ones(t_max)
        return RankStability(steps, ones, ones, removed, True, reason, method)
    dense = scores[0]
    candidates = np.flatnonzero(np.isfinite(dense))
    dense_order = candidates[np.argsort(dense[candidates], kind="stable")]  # lowest first
    rho, jac = np.full(t_max, np.nan), np.full(t_max, np.nan)
    for t in steps:
        if t - 1 < scores.shape[0]:
            both = np.isfinite(scores[t - 1]) & np.isfinite(dense)
            rho[t - 1] = spearman(scores[t - 1, both], dense[both])
        gone = (traj.removal_step > 0) & (traj.removal_step <= t)
        would = np.zeros_like(gone)
        would[dense_order[: removed[t - 1]]] = True
        union = int((gone | would).sum())
        jac[t - 1] = (gone & would).sum() / union if union else 1.0
    if "scores_added" in traj.meta:  # not the scores that chose: Jaccard at step 1 measures the difference
        notes = [
            "Spearman at step 1 is 1 by construction (step 1 ranks the dense model); these scores were measured "
            "again along the trajectory's own order by a later engine (benchmarks/add_example_scores.py), so "
            f"Jaccard at step 1 ({jac[0]:.4f}) is the overlap of the first removal with the lowest of today's "
            "dense scores"
        ]
    else:
        notes = ["Spearman and Jaccard at step 1 are 1 by construction (step 1 ranks the dense model)"]
    if traj.meta.get("request", {}).get("align"):
        notes.append("--align rounds every cut: Jaccard < 1 at step 1 comes from the rounding")
    return RankStability(steps, rho, jac, removed, False, "", method, notes)


# ---- what a head attends to ------------------------------------------------------------------
MAX_ATTENTION_TOKENS = 64
DEFAULT_ATTENTION_TEXT = "The cat sat on the mat because it was warm, and the dog lay beside it by the fire."


@dataclass
class AttentionPatterns:
    """Every layer's attention weights for one text: (layers, query heads, tokens, tokens), float32."""

    tokens: list[str]
    weights: np.ndarray
    kept_heads: list[tuple[int, ...]] | None = None  # per layer, the query heads the model still has (None: all)

    def head(self, layer: int, unit: int, gqa: str, group_size: int) -> np.ndarray:
        """One head unit's pattern (tokens, tokens); a KV group is the mean of its query heads."""
        if gqa == "query":
            return self.weights[layer, unit]
        return self.weights[layer, unit * group_size : (unit + 1) * group_size].mean(axis=0)

    def has(self, layer: int, unit: int, gqa: str, group_size: int) -> bool:
        if self.kept_heads is None:
            return True
        heads = [unit] if gqa == "query" else range(unit * group_size, (unit + 1) * group_size)
        return any(h in self.kept_heads[layer] for h in heads)

    def to_dict(self) -> dict:
        return asdict(self) | {"weights": self.weights.tolist()}


def attention_tokens(loaded, text: str) -> "torch.Tensor":  # noqa: F821
    """The text's token ids (a BOS in front for the families that need one); one-line errors for bad input."""
    import torch

    if not isinstance(text, str) or not text.strip():
        raise GispError("the text is empty: type a sentence to see what the head attends to")
    ids = loaded.tokenizer(text, add_special_tokens=True)["input_ids"]
    bos = getattr(loaded.tokenizer, "bos_token_id", None)
    if loaded.adapter.needs_bos and bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + list(ids)
    if len(ids) > MAX_ATTENTION_TOKENS:
        raise GispError(
            f"the text is {len(ids)} tokens long: attention patterns are drawn for at most "
            f"{MAX_ATTENTION_TOKENS} tokens (about 40 stay readable); shorten it"
        )
    return torch.tensor([ids], dtype=torch.long, device=loaded.device)


def attention_patterns(loaded, text: str, trajectory: Trajectory | None = None, step: int = 0) -> AttentionPatterns:
    """Attention weights of every head for ``text``: one forward with eager attention, of the dense model or, with
    ``trajectory`` and ``step > 0``, of the step's subnetwork (heads keep their numbers).

    The subnetwork is the dense model with the inputs of ``o_proj`` from removed query heads and of ``down_proj``
    from removed channels zeroed by hooks: what the residual stream receives is the pruned model's, with no copy of
    the weights. The hooks act only in the calling thread, so another session using the same cached model is not
    affected (FLAP's bias compensation changes weights: a FLAP step is built as a masked copy instead). With
    grouped-query attention the weights are per query head (each with its KV head's keys); a KV-group unit is the
    mean of its query heads (``head``).
    """
    import copy
    import dataclasses

    import torch

    ids = attention_tokens(loaded, text)
    model, kept, hooks = loaded.model, None, []
    if trajectory is not None and step > 0:
        from ..pruning.subnetwork import apply_step, check_compatible, compensates

        check_compatible(loaded, trajectory)
        trajectory.check_step(step)
        keep = trajectory.keep_mask(step)
        q_keep, _ = trajectory.space.head_and_kv_keep(keep)
        kept = [tuple(int(h) for h in np.flatnonzero(row)) for row in q_keep]
        if compensates(trajectory):
            masked = dataclasses.replace(loaded, model=copy.deepcopy(loaded.model))
            apply_step(masked, trajectory, step, physical=False)
            model = masked.model
        else:
            hooks = _input_masks(loaded, trajectory, keep)
    previous = getattr(model.config, "_attn_implementation", None)
    model.set_attn_implementation("eager")
    _MASKING.active = bool(hooks)
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True, use_cache=False)
    finally:
        _MASKING.active = False
        for hook in hooks:
            hook.remove()
        if previous and previous != "eager":
            model.set_attn_implementation(previous)
    if not out.attentions or any(a is None for a in out.attentions):
        raise GispError("this model returned no attention weights (its attention cannot run eagerly)")
    weights = torch.stack([a[0].float() for a in out.attentions]).cpu().numpy()
    tokens = [loaded.tokenizer.decode([i]) for i in ids[0].tolist()]
    return AttentionPatterns(tokens=tokens, weights=weights, kept_heads=kept)


_MASKING = threading.local()  # set while this thread's forward runs a step's subnetwork


def _input_masks(loaded, trajectory: Trajectory, keep: np.ndarray) -> list:
    """Pre-hooks on every layer's ``o_proj`` and ``down_proj`` zeroing the inputs of removed heads and channels."""
    import torch

    g, space = trajectory.geometry, trajectory.space
    q_keep, _ = space.head_and_kv_keep(keep)
    _, ch_keep = space.as_grid(np.asarray(keep, bool))
    hooks = []

    def zeroing(mask: torch.Tensor):
        def hook(module, args):
            if not getattr(_MASKING, "active", False):
                return None
            return (args[0] * mask.to(args[0].dtype),) + tuple(args[1:])

        return hook

    for i, layer in enumerate(loaded.adapter.layers(loaded.model)):
        heads = torch.as_tensor(np.repeat(q_keep[i], g.head_dim), dtype=torch.float32, device=loaded.device)
        channels = torch.as_tensor(ch_keep[i], dtype=torch.float32, device=loaded.device)
        hooks.append(loaded.adapter.attention(layer).o.register_forward_pre_hook(zeroing(heads)))
        hooks.append(loaded.adapter.mlp(layer).down.register_forward_pre_hook(zeroing(channels)))
    return hooks
