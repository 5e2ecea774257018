"""Which structures an export keeps when it does not keep the trajectory's point as it is: the same width in
every layer (uniform), or every layer's MLP width rounded to a multiple (aligned); both in the trajectory's order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..core.errors import GispError
from ..model.loading import LoadedModel
from ..model.structures import StructureSpace
from ..pruning.methods import aligned_count, check_align
from ..pruning.trajectory import Trajectory

UNIFORM_RULE = (
    "Every layer gets the same widths. Head count: the stock-loadable (KV heads x query heads per KV head) "
    "nearest the trajectory point's mean kept query heads per layer (then nearest its mean kept KV heads); "
    "under gqa=kv-group every kept KV head keeps all its query heads. Channel count: chosen so that the decoder "
    "linear weights match the point's as closely as possible. In each layer the structures kept are those that "
    "survived longest in the trajectory (removal step; never removed counts as last), ties broken by the last "
    "GISP score, and in layers never scored (protected layers) by weight L2 norm; a KV group ranks as its "
    "best-ranked query head. Protected layers are cut too, so this model differs from the trajectory's point."
)


@dataclass(frozen=True)
class UniformWidths:
    """Widths of every layer of a uniform export."""

    heads: int  # query heads
    kv_heads: int
    channels: int

    def to_dict(self) -> dict:
        return asdict(self)


# ---- which structures a uniform export keeps -----------------------------------------------
def _survival_rank(trajectory: Trajectory, fallback_scores: np.ndarray | None) -> np.ndarray:
    """Per structure, its rank within its layer and kind (0 = first to cut): later removal, then higher score."""
    space = trajectory.space
    survival = np.where(trajectory.removal_step == -1, trajectory.num_steps + 1, trajectory.removal_step)
    score = trajectory.score.astype(np.float64)
    if fallback_scores is not None:
        score = np.where(np.isnan(score), fallback_scores, score)
    score = np.nan_to_num(score, nan=-np.inf)
    rank = np.zeros(space.size, np.int64)
    for layer in range(space.geometry.num_layers):
        for block in (space.head_slice(layer), space.channel_slice(layer)):
            ids = np.arange(block.start, block.stop)
            # lexsort: last key is primary; a lower index wins a full tie (as in the GISP ranking)
            order = np.lexsort((-space.index[ids], score[ids], survival[ids]))
            rank[ids[order]] = np.arange(len(ids))
    return rank


def _top(values: np.ndarray, n: int) -> np.ndarray:
    return np.sort(np.argsort(-values, kind="stable")[:n])


def uniform_widths(
    trajectory: Trajectory, step: int, accepts: Callable[[int, int], bool] | None = None, align: int | None = None
) -> UniformWidths:
    """The per-layer widths of the uniform export of ``step`` (see ``UNIFORM_RULE``).

    ``accepts(heads, kv_heads)`` says whether the family's stock config allows that head
    count (Llama requires the hidden size to be a multiple of the head count). ``align``: the
    channel count rounded as ``ALIGN_RULE`` says.
    """
    space, g = trajectory.space, trajectory.geometry
    point = trajectory.keep_mask(step)
    q, kv = space.head_and_kv_keep(point)
    layers = g.num_layers
    mean_heads, mean_kv = q.sum() / layers, kv.sum() / layers
    group_sizes = [g.group_size] if space.gqa == "kv-group" else range(1, g.group_size + 1)
    candidates = [
        (n_kv * per_kv, n_kv)
        for n_kv in range(1, g.num_kv_heads + 1)
        for per_kv in group_sizes
        if accepts is None or accepts(n_kv * per_kv, n_kv)
    ]
    if not candidates:
        raise GispError("no uniform head count is accepted by this model family's config: use a per-layer export")
    heads, n_kv = min(candidates, key=lambda c: (abs(c[0] - mean_heads), abs(c[1] - mean_kv), -c[0]))
    target = float(space.linear_params_per_layer(point).sum()) / layers
    attention = 2 * g.head_dim * g.hidden_size * (heads + n_kv)
    channels = min(max(int(round((target - attention) / (3 * g.hidden_size))), 1), g.intermediate_size)
    if align is not None:
        check_align(align, g.intermediate_size)
        channels = aligned_count(channels, align, g.intermediate_size)
    return UniformWidths(heads, n_kv, channels)


def uniform_keep_mask(
    trajectory: Trajectory,
    step: int,
    accepts: Callable[[int, int], bool] | None = None,
    fallback_scores: np.ndarray | None = None,
    align: int | None = None,
) -> tuple[np.ndarray, UniformWidths]:
    """A keep-mask with the same widths in every layer, chosen from the trajectory's order (``UNIFORM_RULE``).

    ``fallback_scores`` ranks structures the trajectory never scored (NaN score, i.e. protected layers).
    ``align``: the channel count a multiple of it (``ALIGN_RULE``).
    """
    space, g = trajectory.space, trajectory.geometry
    widths = uniform_widths(trajectory, step, accepts, align)
    rank = _survival_rank(trajectory, fallback_scores)
    keep = np.zeros(space.size, bool)
    per_kv = widths.heads // widths.kv_heads
    for layer in range(g.num_layers):
        heads, channels = space.head_slice(layer), space.channel_slice(layer)
        head_rank = rank[heads]
        if space.gqa == "kv-group":
            keep[heads.start + _top(head_rank, widths.kv_heads)] = True
        else:
            groups = head_rank.reshape(g.num_kv_heads, g.group_size)
            for group in _top(groups.max(axis=1), widths.kv_heads):
                keep[heads.start + group * g.group_size + _top(groups[group], per_kv)] = True
        keep[channels.start + _top(rank[channels], widths.channels)] = True
    return keep, widths


def aligned_keep_mask(trajectory: Trajectory, step: int, align: int) -> np.ndarray:
    """The keep-mask of ``step`` with every layer's MLP channel count rounded as ``ALIGN_RULE`` says.

    The channels added or dropped follow the trajectory's own order (``_survival_rank``): a layer
    rounded up gets back the channels removed latest (at ``step`` itself first), a layer rounded
    down loses the survivors removed soonest after ``step``. Heads, and layers at full width
    (protected ones among them), stay as they are.
    """
    space = trajectory.space
    check_align(align, space.geometry.intermediate_size)
    keep = trajectory.keep_mask(step)
    rank = _survival_rank(trajectory, None)
    for layer in range(space.geometry.num_layers):
        channels = space.channel_slice(layer)
        kept = int(keep[channels].sum())
        target = aligned_count(kept, align, space.geometry.intermediate_size)
        if target != kept:
            keep[channels] = False
            keep[channels.start + _top(rank[channels], target)] = True
    return keep


def weight_norms(loaded: LoadedModel, space: StructureSpace, layers: list[int]) -> np.ndarray:
    """L2 norm of each structure's weights in ``layers`` (NaN elsewhere): the ranking where GISP never scored."""
    g, adapter = space.geometry, loaded.adapter
    out = np.full(space.size, np.nan)
    with torch.no_grad():
        for i in layers:
            layer = adapter.layers(loaded.model)[i]
            lin, mlp = adapter.attention(layer), adapter.mlp(layer)
            sq = lambda w, dim: w.detach().float().pow(2).sum(dim)  # noqa: E731
            q = sq(lin.q.weight, 1).reshape(g.num_heads, g.head_dim).sum(1)
            o = sq(lin.o.weight, 0).reshape(g.num_heads, g.head_dim).sum(1)
            head = q + o
            if space.gqa == "kv-group":
                kv = (sq(lin.k.weight, 1) + sq(lin.v.weight, 1)).reshape(g.num_kv_heads, g.head_dim).sum(1)
                head = head.reshape(g.num_kv_heads, g.group_size).sum(1) + kv
            channel = sq(mlp.gate.weight, 1) + sq(mlp.up.weight, 1) + sq(mlp.down.weight, 0)
            out[space.head_slice(i)] = head.sqrt().cpu().numpy()
            out[space.channel_slice(i)] = channel.sqrt().cpu().numpy()
    return out


def config_accepts(config) -> Callable[[int, int], bool]:
    base = config.to_dict()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def accepts(heads: int, kv_heads: int) -> bool:
        try:
            type(config).from_dict(
                {**base, "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim}
            )
        except Exception:  # the family's own validation refused these widths
            return False
        return True

    return accepts
