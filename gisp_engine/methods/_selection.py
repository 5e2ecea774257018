"""How a step turns scores into removals: one global ranking cut to a count or to a parameter
budget, or the same ratio inside every layer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..structures import StructureSpace


@dataclass
class Cut:
    """Where step ``t`` must end: the structures removed in total, and the schedule's ratio."""

    removed_total: int  # structures removed in total after the step (the plan's target)
    ratio: float  # the schedule's ratio at the step
    layer_share: float  # all structures / unprotected ones: a global count as a ratio inside unprotected layers


class Selection:
    name: str

    def choose(self, space: StructureSpace, keep: np.ndarray, protected: np.ndarray, scores: np.ndarray,
               cut: Cut) -> np.ndarray:
        """Ids to remove now (alive, unprotected)."""
        raise NotImplementedError


def global_ranking(keep: np.ndarray, protected: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Alive unprotected ids, lowest score first; ties go to the lower id."""
    candidates = np.flatnonzero(keep & ~protected)
    return candidates[np.lexsort((candidates, scores[candidates]))]


class GlobalCount(Selection):
    """One global ranking over heads and channels of every layer, cut to the plan's structure count."""

    name = "global"

    def choose(self, space, keep, protected, scores, cut):
        return global_ranking(keep, protected, scores)[: cut.removed_total - int((~keep).sum())]


class GlobalParamBudget(Selection):
    """One global ranking cut where the parameter sparsity is nearest the schedule's ratio (FLAP)."""

    name = "global"

    def choose(self, space, keep, protected, scores, cut):
        return choose_to_param_budget(space, keep, global_ranking(keep, protected, scores), cut.ratio)


class PerLayer(Selection):
    """The same ratio of heads and of channels inside every unprotected layer."""

    name = "per-layer"

    def choose(self, space, keep, protected, scores, cut):
        ratio = min(1.0, cut.removed_total / space.size * cut.layer_share)
        return choose_per_layer(space, keep, scores, protected, ratio)


def choose_to_param_budget(space: StructureSpace, keep: np.ndarray, ranked: np.ndarray,
                           param_sparsity: float) -> np.ndarray:
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


def choose_per_layer(space: StructureSpace, keep: np.ndarray, scores: np.ndarray, protected: np.ndarray,
                     layer_ratio: float) -> np.ndarray:
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


GLOBAL, PARAM_BUDGET, PER_LAYER = GlobalCount(), GlobalParamBudget(), PerLayer()
