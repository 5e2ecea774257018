"""The prunable structures of a model and the bookkeeping of what a keep-mask means.

Every structure has a stable name ``(layer, kind, index)``: kind ``head`` or ``channel``.
With the ``query`` GQA policy a head is a query head; with ``kv-group`` it is a KV head
together with all of its query heads. Structures are numbered layer by layer, heads
first, then channels; the same numbering is used in trajectories, heatmaps and exports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..core.errors import GispError

if TYPE_CHECKING:  # a type only: validating a config (config imports this module) loads no torch
    from .adapters import Geometry

HEAD = "head"
CHANNEL = "channel"
KINDS = (HEAD, CHANNEL)
GQA_POLICIES = ("query", "kv-group")
NORMALIZATIONS = ("param-count", "reference")


@dataclass(frozen=True)
class LayerKeep:
    """What survives in one layer, as original indices in ascending order."""

    heads: tuple[int, ...]  # query heads
    kv_heads: tuple[int, ...]
    channels: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"heads": list(self.heads), "kv_heads": list(self.kv_heads), "channels": list(self.channels)}


class StructureSpace:
    """All heads and channels of a model under one GQA policy."""

    def __init__(self, geometry: Geometry, gqa: str = "query"):
        if gqa not in GQA_POLICIES:
            raise GispError(f"unknown GQA policy {gqa!r}: choose one of {', '.join(GQA_POLICIES)}")
        if geometry.num_heads % geometry.num_kv_heads:
            raise GispError(f"{geometry.num_heads} query heads do not divide into {geometry.num_kv_heads} KV heads")
        self.geometry = geometry
        self.gqa = gqa
        g = geometry
        self.head_units = g.num_heads if gqa == "query" else g.num_kv_heads
        self.per_layer = self.head_units + g.intermediate_size
        self.size = g.num_layers * self.per_layer
        one_layer_kind = np.concatenate([np.zeros(self.head_units, np.int8), np.ones(g.intermediate_size, np.int8)])
        one_layer_index = np.concatenate([np.arange(self.head_units), np.arange(g.intermediate_size)])
        self.layer = np.repeat(np.arange(g.num_layers, dtype=np.int32), self.per_layer)
        self.kind = np.tile(one_layer_kind, g.num_layers)  # 0 = head, 1 = channel
        self.index = np.tile(one_layer_index, g.num_layers).astype(np.int32)

    # ---- naming -------------------------------------------------------------------------
    def id(self, layer: int, kind: str, index: int) -> int:
        if kind == HEAD:
            if not 0 <= index < self.head_units:
                raise IndexError(f"head {index} out of range 0..{self.head_units - 1}")
            return layer * self.per_layer + index
        if not 0 <= index < self.geometry.intermediate_size:
            raise IndexError(f"channel {index} out of range")
        return layer * self.per_layer + self.head_units + index

    def name(self, structure_id: int) -> tuple[int, str, int]:
        return int(self.layer[structure_id]), KINDS[int(self.kind[structure_id])], int(self.index[structure_id])

    def head_slice(self, layer: int) -> slice:
        start = layer * self.per_layer
        return slice(start, start + self.head_units)

    def channel_slice(self, layer: int) -> slice:
        start = layer * self.per_layer + self.head_units
        return slice(start, start + self.geometry.intermediate_size)

    def as_grid(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Split a per-structure array into (layers x head units) and (layers x channels)."""
        grid = np.asarray(values).reshape(self.geometry.num_layers, self.per_layer)
        return grid[:, : self.head_units], grid[:, self.head_units :]

    # ---- protection -----------------------------------------------------------------------
    def protected_layers(self, protect_first: int, protect_last: int) -> list[int]:
        n = self.geometry.num_layers
        if protect_first < 0 or protect_last < 0:
            raise GispError("--protect-first and --protect-last must be 0 or more")
        if protect_first + protect_last >= n:
            raise GispError(
                f"protecting {protect_first} first and {protect_last} last layers leaves nothing to prune "
                f"in a {n}-layer model"
            )
        return sorted(set(range(protect_first)) | set(range(n - protect_last, n)))

    def protected_mask(self, protect_first: int, protect_last: int) -> np.ndarray:
        return np.isin(self.layer, self.protected_layers(protect_first, protect_last))

    # ---- normalization ------------------------------------------------------------------
    def head_unit_params(self) -> int:
        """Weights that a head unit's score is summed over (biases aside)."""
        g = self.geometry
        per_head = g.head_dim * g.hidden_size
        if self.gqa == "kv-group":
            return (2 * g.group_size + 2) * per_head  # q rows + o cols of the group, k and v rows
        if g.is_gqa:
            return 2 * per_head  # q rows + o cols; K/V are shared and not scored
        return 4 * per_head  # q, k, v rows + o cols

    def channel_params(self) -> int:
        return 3 * self.geometry.hidden_size  # gate row, up row, down column

    def divisors(self, normalization: str) -> np.ndarray:
        """Per-structure divisor applied to raw scores before the global ranking."""
        g = self.geometry
        if normalization == "param-count":
            head, channel = self.head_unit_params(), self.channel_params()
        elif normalization == "reference":
            # the reference implementation's constants (a head's, and 3*d_ff for a channel)
            head, channel = 4 * g.head_dim * g.hidden_size, 3 * g.intermediate_size
        else:
            raise GispError(f"unknown normalization {normalization!r}: choose one of {', '.join(NORMALIZATIONS)}")
        return np.where(self.kind == 0, float(head), float(channel))

    # ---- what a keep-mask means -----------------------------------------------------------
    def _check(self, keep: np.ndarray) -> np.ndarray:
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (self.size,):
            raise GispError(f"keep-mask has shape {keep.shape}, expected ({self.size},)")
        return keep

    def head_and_kv_keep(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(layers x query heads) and (layers x KV heads) boolean grids."""
        g = self.geometry
        heads, _ = self.as_grid(self._check(keep))
        if self.gqa == "query":
            kv = heads.reshape(g.num_layers, g.num_kv_heads, g.group_size).any(axis=2)
            return heads, kv
        return np.repeat(heads, g.group_size, axis=1), heads

    def layer_keep(self, keep: np.ndarray) -> list[LayerKeep]:
        q, kv = self.head_and_kv_keep(keep)
        _, channels = self.as_grid(self._check(keep))
        return [
            LayerKeep(
                heads=tuple(np.flatnonzero(q[i]).tolist()),
                kv_heads=tuple(np.flatnonzero(kv[i]).tolist()),
                channels=tuple(np.flatnonzero(channels[i]).tolist()),
            )
            for i in range(self.geometry.num_layers)
        ]

    def linear_params_per_layer(self, keep: np.ndarray) -> np.ndarray:
        """Decoder linear weights (q, k, v, o, gate, up, down; biases excluded) kept in each layer."""
        g = self.geometry
        q, kv = self.head_and_kv_keep(keep)
        _, channels = self.as_grid(self._check(keep))
        per_head = g.head_dim * g.hidden_size
        return 2 * per_head * (q.sum(1) + kv.sum(1)) + 3 * g.hidden_size * channels.sum(1)

    def total_linear_params(self) -> int:
        return int(self.linear_params_per_layer(np.ones(self.size, bool)).sum())

    def param_sparsity(self, keep: np.ndarray) -> float:
        return 1.0 - float(self.linear_params_per_layer(keep).sum()) / self.total_linear_params()
