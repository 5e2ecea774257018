"""Baseline pruning methods on the same structure machinery as GISP.

Each ranks the structures *once*, on the dense model, and its trajectory is a prefix
order of that fixed ranking (say so in the metadata); only GISP re-scores at every step.

| method | score of a structure | selection |
|---|---|---|
| ``gisp-oneshot`` | GISP's normalized Σ|W⊙ḡ| on the dense model | global (every step equals ``--steps 1`` at that sparsity) |
| ``llm-pruner`` | first-order Taylor Σ|W⊙ḡ| (LLM-Pruner style) | within each layer, same ratio everywhere |
| ``magnitude`` | L2 norm of the structure's weights | within each layer, same ratio everywhere |
| ``random`` | seeded uniform random numbers | within each layer, same ratio everywhere |
| ``wanda-sp`` | Σ |W|·‖X‖ over the structure's ``o_proj``/``down_proj`` columns | within each layer, same ratio everywhere |
| ``flap`` | FLAP's WIFV: Var(X)·‖W_col‖² per column (squared for ``o_proj``), standardized per layer and block; a head is the mean of its columns | global, cut to a parameter budget |

FLAP follows its reference code (CASIA-IVA-Lab/FLAP ``lib/prune.py``, ``prune_flap`` with
``--metrics WIFV --structure AL-AM``); what remains different is listed in the README.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .adapters import DecoderAdapter
from .importance import score_structures
from .objectives import Objective
from .structures import StructureSpace
from .surgery import full_layout

from .config import METHODS  # noqa: E402  (the list lives where no torch is needed)
GLOBAL_SELECTION = {"gisp", "gisp-oneshot", "flap"}
# part of a method's cache key once its results change (FLAP 2: as its reference code, cut to a parameter budget)
REVISIONS = {"flap": 2}


def selection(method: str) -> str:
    return "global" if method in GLOBAL_SELECTION else "per-layer"


def describe(method: str) -> str:
    if method == "gisp":
        return "iterative: scores recomputed on the pruned model at every step"
    return (f"fixed ranking ({method}): scores computed once on the dense model; every step is a prefix "
            f"of one {selection(method)} order")


def fixed_scores(method: str, model: torch.nn.Module, adapter: DecoderAdapter, space: StructureSpace,
                 objective: Objective, scored_layers: Sequence[int], normalization_divisors: np.ndarray,
                 seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One score per structure (NaN outside ``scored_layers``; lower is removed earlier), and extras.

    FLAP's extras are the calibration means of the inputs of ``o_proj`` and ``down_proj``
    (layers x features), kept in the trajectory for its bias compensation.
    """
    scored = np.isin(space.layer, list(scored_layers))
    extras: dict[str, np.ndarray] = {}
    if method in ("gisp-oneshot", "llm-pruner"):
        raw = score_structures(model, adapter, space, full_layout(space), objective, scored_layers).raw
        raw = np.nan_to_num(raw, nan=0.0)
        out = raw / normalization_divisors if method == "gisp-oneshot" else raw
    elif method == "random":
        out = np.random.default_rng(seed).random(space.size)
    elif method == "magnitude":
        out = _magnitude(model, adapter, space, scored_layers)
    elif method in ("wanda-sp", "flap"):
        stats = _input_statistics(model, adapter, objective, scored_layers)
        if method == "flap":
            out = _flap_scores(model, adapter, space, scored_layers, stats)
            extras = _input_means(space, stats)
        else:
            out = _activation_scores(model, adapter, space, scored_layers, stats)
    else:
        raise ValueError(f"not a fixed-ranking method: {method}")
    return np.where(scored, out, np.nan), extras


def _input_means(space: StructureSpace, stats: dict) -> dict[str, np.ndarray]:
    g = space.geometry
    means = {"input_mean_o": np.zeros((g.num_layers, g.num_heads * g.head_dim), np.float32),
             "input_mean_down": np.zeros((g.num_layers, g.intermediate_size), np.float32)}
    for (layer, key), (count, total, _) in stats.items():
        means[f"input_mean_{key}"][layer] = (total / count).cpu().numpy()
    return means


def _head_columns(space: StructureSpace, unit: int) -> list[int]:
    """Query heads (o_proj column blocks) that make up head unit ``unit``."""
    g = space.geometry
    return [unit] if space.gqa == "query" else list(range(unit * g.group_size, (unit + 1) * g.group_size))


@torch.no_grad()
def _magnitude(model, adapter: DecoderAdapter, space: StructureSpace, layers: Sequence[int]) -> np.ndarray:
    g, dh = space.geometry, space.geometry.head_dim
    out = np.full(space.size, np.nan)
    for i in layers:
        layer = adapter.layers(model)[i]
        a, m = adapter.attention(layer), adapter.mlp(layer)
        q_rows = a.q.weight.float().pow(2).sum(1).view(g.num_heads, dh).sum(1)
        o_cols = a.o.weight.float().pow(2).sum(0).view(g.num_heads, dh).sum(1)
        kv = (a.k.weight.float().pow(2).sum(1) + a.v.weight.float().pow(2).sum(1)).view(g.num_kv_heads, dh).sum(1)
        per_head = (q_rows + o_cols).cpu().numpy()
        kv = kv.cpu().numpy()
        for u in range(space.head_units):
            heads = _head_columns(space, u)
            total = per_head[heads].sum()
            if space.gqa == "kv-group" or not g.is_gqa:  # the unit owns its K/V rows
                total += kv[u]
            out[space.id(i, "head", u)] = np.sqrt(total)
        ch = (m.gate.weight.float().pow(2).sum(1) + m.up.weight.float().pow(2).sum(1) + m.down.weight.float().pow(2).sum(0))
        out[space.channel_slice(i)] = ch.sqrt().cpu().numpy()
    return out


@torch.no_grad()
def _input_statistics(model, adapter: DecoderAdapter, objective: Objective, layers: Sequence[int]) -> dict:
    """Per input feature of o_proj and down_proj: token count, sum and sum of squares (float64).

    Only real tokens count: in right-padded task batches, the positions after a row's last
    scored token are padding.
    """
    stats: dict = {}
    handles = []
    real: dict = {"mask": None}  # the current batch's real positions (None: all)

    def make_hook(key):
        def hook(module, inputs):
            x = inputs[0].detach()
            mask = real["mask"]
            x = (x[mask.to(x.device)] if mask is not None else x.reshape(-1, x.shape[-1])).double()
            entry = stats.setdefault(key, [0, torch.zeros(x.shape[1], dtype=torch.float64, device=x.device),
                                           torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)])
            entry[0] += x.shape[0]
            entry[1] += x.sum(0)
            entry[2] += x.pow(2).sum(0)

        return hook

    for i in layers:
        layer = adapter.layers(model)[i]
        handles.append(adapter.attention(layer).o.register_forward_pre_hook(make_hook((i, "o"))))
        handles.append(adapter.mlp(layer).down.register_forward_pre_hook(make_hook((i, "down"))))
    try:
        for batch in objective.batches():
            real["mask"] = _real_positions(batch)
            objective.loss(model, batch)
    finally:
        for h in handles:
            h.remove()
    return stats


def _real_positions(batch: dict) -> torch.Tensor | None:
    """(batch x positions) mask of real tokens: up to each row's last scored target, or all."""
    scored = batch.get("scored")
    if scored is None:
        return None
    positions = torch.arange(scored.shape[1])
    last = torch.where(scored, positions, -1).max(dim=1).values
    return positions[None, :] <= last[:, None]


@torch.no_grad()
def _activation_scores(model, adapter: DecoderAdapter, space: StructureSpace, layers: Sequence[int],
                       stats: dict) -> np.ndarray:
    """Wanda-SP: |W|·‖X‖ summed over each input column of o_proj (per head) and down_proj (per channel)."""
    g, dh = space.geometry, space.geometry.head_dim
    out = np.full(space.size, np.nan)
    for i in layers:
        layer = adapter.layers(model)[i]
        per_block = {}
        for key, weight in (("o", adapter.attention(layer).o.weight), ("down", adapter.mlp(layer).down.weight)):
            _, _, squares = stats[(i, key)]
            w = weight.detach().double()
            per_block[key] = (w.abs() * squares.sqrt().to(w.device)[None, :]).sum(0).cpu().numpy()
        per_head = per_block["o"].reshape(g.num_heads, dh).sum(1)
        for u in range(space.head_units):
            out[space.id(i, "head", u)] = per_head[_head_columns(space, u)].sum()
        out[space.channel_slice(i)] = per_block["down"]
    return out


def _fluctuation(stats: dict, key: tuple, weight: torch.Tensor) -> np.ndarray:
    """FLAP's WIFV per input column: sample variance of the input feature times the column's squared norm."""
    count, total, squares = stats[key]
    mean = total / count
    var = ((squares - count * mean.pow(2)) / max(count - 1, 1)).clamp_min(0)
    w = weight.detach().double()
    return (var.to(w.device) * w.pow(2).sum(0)).cpu().numpy()


def _standardize(values: np.ndarray) -> np.ndarray:
    """FLAP's ``standarlization``: (x - mean) / std over one layer's columns, std with n - 1 (torch.std)."""
    spread = values.std(ddof=1) if values.size > 1 else 0.0
    return (values - values.mean()) / (spread if spread > 0 else 1.0)


@torch.no_grad()
def _flap_scores(model, adapter: DecoderAdapter, space: StructureSpace, layers: Sequence[int],
                 stats: dict) -> np.ndarray:
    """FLAP (AL-AM, WIFV) as its reference code computes it, one score per head unit and channel.

    Attention: the o_proj column metric is squared, standardized over the layer's columns, and a
    head scores the mean of its columns (a KV group: the mean over its query heads' columns).
    MLP: the down_proj column metric, standardized over the layer's channels. Heads and
    channels of all layers then compete in one ranking (``choose_to_param_budget``).
    """
    g, dh = space.geometry, space.geometry.head_dim
    out = np.full(space.size, np.nan)
    for i in layers:
        layer = adapter.layers(model)[i]
        columns = _standardize(_fluctuation(stats, (i, "o"), adapter.attention(layer).o.weight) ** 2)
        per_head = columns.reshape(g.num_heads, dh).mean(1)
        for u in range(space.head_units):
            out[space.id(i, "head", u)] = per_head[_head_columns(space, u)].mean()
        out[space.channel_slice(i)] = _standardize(_fluctuation(stats, (i, "down"), adapter.mlp(layer).down.weight))
    return out


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
