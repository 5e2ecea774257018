"""How a step turns scores into removals: one global ranking cut to a count or to a parameter
budget, or the same ratio inside every layer; then, when the run asks for aligned widths, every
layer's MLP channel count rounded to a multiple (``ALIGN_RULE``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...core.errors import GispError
from ...model.structures import StructureSpace

ALIGN_RULE = (
    "Every layer's MLP channel count is rounded to the nearest multiple of N, ties to the larger. The count never "
    "rises above what the layer had (its full width, at export), and a full width that is not a multiple of N "
    "stays as it is until the layer is cut. A layer left with channels keeps at least N (or its full width, if "
    "narrower), and one left with none stays empty. Heads are not rounded: a head is head_dim (64 to 256) rows "
    "wide already."
)


@dataclass
class Cut:
    """Where step ``t`` must end: the structures removed in total, and the schedule's ratio."""

    removed_total: int  # structures removed in total after the step (the plan's target)
    ratio: float  # the schedule's ratio at the step
    layer_share: float  # all structures / unprotected ones: a global count as a ratio inside unprotected layers
    align: int = 1  # every layer's MLP channel count a multiple of this after the step (1: any count)


class Selection:
    name: str

    def choose(
        self, space: StructureSpace, keep: np.ndarray, protected: np.ndarray, scores: np.ndarray, cut: Cut
    ) -> np.ndarray:
        """Ids to remove now (alive, unprotected), with channel counts rounded to multiples of ``cut.align``."""
        chosen = self.select(space, keep, protected, scores, cut)
        return align_channels(space, keep, scores, chosen, cut.align) if cut.align > 1 else chosen

    def select(
        self, space: StructureSpace, keep: np.ndarray, protected: np.ndarray, scores: np.ndarray, cut: Cut
    ) -> np.ndarray:
        """The selection's own ids to remove now, before any rounding."""
        raise NotImplementedError


def global_ranking(keep: np.ndarray, protected: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Alive unprotected ids, lowest score first; ties go to the lower id."""
    candidates = np.flatnonzero(keep & ~protected)
    return candidates[np.lexsort((candidates, scores[candidates]))]


class GlobalCount(Selection):
    """One global ranking over heads and channels of every layer, cut to the plan's structure count."""

    name = "global"

    def select(self, space, keep, protected, scores, cut):
        # aligned widths may have removed more than the plan by now: then nothing more this step
        return global_ranking(keep, protected, scores)[: max(0, cut.removed_total - int((~keep).sum()))]


class GlobalParamBudget(Selection):
    """One global ranking cut where the parameter sparsity is nearest the schedule's ratio (FLAP)."""

    name = "global"

    def select(self, space, keep, protected, scores, cut):
        return choose_to_param_budget(space, keep, global_ranking(keep, protected, scores), cut.ratio)


class PerLayer(Selection):
    """The same ratio of heads and of channels inside every unprotected layer."""

    name = "per-layer"

    def select(self, space, keep, protected, scores, cut):
        ratio = min(1.0, cut.removed_total / space.size * cut.layer_share)
        return choose_per_layer(space, keep, scores, protected, ratio)


def choose_to_param_budget(
    space: StructureSpace, keep: np.ndarray, ranked: np.ndarray, param_sparsity: float
) -> np.ndarray:
    """The prefix of ``ranked`` (alive ids, first to remove first) whose removal brings the decoder
    linear weights closest to ``param_sparsity`` (FLAP's global cut: a parameter budget, not a count).

    Exact accounting: a query head frees its q rows and o columns, and the last query head of a
    KV group also frees the group's k and v rows.
    """
    g = space.geometry
    per_head = g.head_dim * g.hidden_size
    alive_q, _ = space.head_and_kv_keep(keep)
    alive_in_group = alive_q.reshape(g.num_layers, g.num_kv_heads, g.group_size).sum(2)
    freed = np.zeros(len(ranked), np.int64)
    for j, sid in enumerate(ranked):
        layer, index = int(space.layer[sid]), int(space.index[sid])
        if space.kind[sid] == 1:
            freed[j] = 3 * g.hidden_size
        elif space.gqa == "kv-group":
            freed[j] = (2 * g.group_size + 2) * per_head
        else:
            alive_in_group[layer, index // g.group_size] -= 1
            freed[j] = 2 * per_head * (2 if alive_in_group[layer, index // g.group_size] == 0 else 1)
    total = space.total_linear_params()
    removed_now = total - int(space.linear_params_per_layer(keep).sum())
    reached = (removed_now + np.concatenate([[0], np.cumsum(freed)])) / total
    return ranked[: int(np.argmin(np.abs(reached - param_sparsity)))]


def choose_per_layer(
    space: StructureSpace, keep: np.ndarray, scores: np.ndarray, protected: np.ndarray, layer_ratio: float
) -> np.ndarray:
    """Ids to remove so that every unprotected layer has lost ``layer_ratio`` of its heads and of its channels."""
    chosen = []
    for i in np.unique(space.layer[~protected]):
        for block in (space.head_slice(int(i)), space.channel_slice(int(i))):
            ids = np.arange(block.start, block.stop)
            want = min(len(ids), int(round(layer_ratio * len(ids))))
            more = want - int((~keep[ids]).sum())
            if more <= 0:
                continue
            alive = ids[keep[ids]]
            order = alive[np.lexsort((alive, scores[alive]))]
            chosen.extend(order[:more].tolist())
    return np.asarray(chosen, dtype=np.int64)


def check_align(align: int, intermediate_size: int) -> None:
    """Refuse an ``align`` that is not a whole number of at least 1, or wider than the MLP it rounds."""
    if isinstance(align, bool) or not isinstance(align, (int, np.integer)) or align < 1:
        raise GispError(f"--align must be a whole number of at least 1, got {align!r}")
    if align > intermediate_size:
        raise GispError(
            f"--align {align} is wider than the model's MLP ({intermediate_size} channels per layer): "
            f"choose at most {intermediate_size}, typically 32, 64 or 128"
        )


def aligned_count(kept: int, align: int, cap: int) -> int:
    """The channel count of a layer that would keep ``kept`` channels, rounded as ``ALIGN_RULE`` says.

    ``cap``: the most the layer may keep (what it had before the step; its full width at export).
    Allowed counts are the multiples of ``align`` up to ``cap``, and ``cap`` itself.
    """
    if kept <= 0 or kept >= cap:
        return max(0, min(kept, cap))
    below = kept // align * align
    above = min(below + align, cap)
    if below == 0:  # a layer the selection left alive stays alive
        return above
    return above if above - kept <= kept - below else below


def align_channels(
    space: StructureSpace, keep: np.ndarray, scores: np.ndarray, chosen: np.ndarray, align: int
) -> np.ndarray:
    """``chosen`` with every layer's channel count after the step rounded by ``aligned_count``.

    Rounding up keeps back the best-scored of the layer's channels chosen now; rounding down also
    removes the layer's lowest-scored survivors. Either way the step only removes channels alive
    before it, so nesting holds, and a layer the step did not touch stays as it was.
    """
    chosen = np.asarray(chosen, dtype=np.int64)
    after = keep.copy()
    after[chosen] = False
    out = [chosen[space.kind[chosen] == 0]]  # heads as chosen
    for layer in range(space.geometry.num_layers):
        block = space.channel_slice(layer)
        ids = np.arange(block.start, block.stop)
        before, left = int(keep[ids].sum()), int(after[ids].sum())
        target = aligned_count(left, align, before)
        now = ids[keep[ids] & ~after[ids]]
        if target >= left:  # lowest score first, ties to the lower id (as global_ranking)
            out.append(now[np.lexsort((now, scores[now]))][: len(now) - (target - left)])
        else:
            alive = ids[after[ids]]
            out += [now, alive[np.lexsort((alive, scores[alive]))][: left - target]]
    return np.sort(np.concatenate(out))


GLOBAL, PARAM_BUDGET, PER_LAYER = GlobalCount(), GlobalParamBudget(), PerLayer()
