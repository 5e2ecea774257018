"""Calibration statistics of the inputs of ``o_proj`` and ``down_proj``: what Wanda-sp and FLAP read."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ...model.adapters import DecoderAdapter
from ...model.structures import StructureSpace


def head_columns(space: StructureSpace, unit: int) -> list[int]:
    """Query heads (o_proj column blocks) that make up head unit ``unit``."""
    g = space.geometry
    return [unit] if space.gqa == "query" else list(range(unit * g.group_size, (unit + 1) * g.group_size))


def assemble(
    space: StructureSpace,
    layers: Sequence[int],
    per_layer: Callable[[int], tuple[np.ndarray, np.ndarray]],
    reduce: Callable[[np.ndarray], float],
) -> np.ndarray:
    """One score per structure from each layer's (per query head, per channel) scores; a head unit
    ``reduce``s its query heads' scores. NaN outside ``layers``."""
    out = np.full(space.size, np.nan)
    for i in layers:
        per_head, per_channel = per_layer(i)
        for u in range(space.head_units):
            out[space.id(i, "head", u)] = reduce(per_head[head_columns(space, u)])
        out[space.channel_slice(i)] = per_channel
    return out


@torch.no_grad()
def input_statistics(model, adapter: DecoderAdapter, objective, layers: Sequence[int]) -> dict:
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
            entry = stats.setdefault(
                key,
                [
                    0,
                    torch.zeros(x.shape[1], dtype=torch.float64, device=x.device),
                    torch.zeros(x.shape[1], dtype=torch.float64, device=x.device),
                ],
            )
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
