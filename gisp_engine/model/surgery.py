"""Changing a model in place: masking structures to zero, or slicing them out physically.

Both operate on a *layout*: for each layer, the original indices of the query heads,
KV heads and channels that are physically present (``LayerKeep``). A dense model has the
full layout; slicing returns the new one. Masked and sliced models compute the same
function: a removed head contributes nothing once its ``o_proj`` columns are gone or zero.

Slicing works one weight at a time, so it never holds two full copies of the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .adapters import DecoderAdapter
from .structures import LayerKeep, StructureSpace


class KVExpandLinear(nn.Linear):
    """k_proj/v_proj that computes only the kept KV heads, then gives each kept query head its own.

    Used when the kept query heads of a layer no longer map to KV heads in equal groups, so
    the stock ``repeat_kv`` cannot be used; the attention then runs with one KV per query.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, head_dim: int, expand_index: Sequence[int]):
        super().__init__(in_features, out_features, bias=bias, device="meta")
        self.head_dim = head_dim
        self.register_buffer("expand_index", torch.tensor(list(expand_index), dtype=torch.long), persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, head_dim: int, expand_index: Sequence[int]) -> "KVExpandLinear":
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, head_dim, expand_index)
        new.weight = linear.weight
        new.bias = linear.bias
        new.expand_index = new.expand_index.to(linear.weight.device)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        heads = out.unflatten(-1, (-1, self.head_dim))
        return heads.index_select(-2, self.expand_index).flatten(-2)


class NullAttention(nn.Module):
    """An attention block with every head removed: it adds nothing to the residual stream."""

    def __init__(self, layer_idx: int, head_dim: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.head_dim = head_dim
        self.bias: torch.Tensor | None = None  # a constant output (FLAP's bias compensation), else zero

    def forward(self, hidden_states: torch.Tensor, *args, cache=None, past_key_values=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        if cache is not None:  # keep the cache's sequence length in step with the other layers
            b, t = hidden_states.shape[:2]
            empty = hidden_states.new_zeros(b, 0, t, self.head_dim)
            cache.update(empty, empty, self.layer_idx)
        out = torch.zeros_like(hidden_states)
        return (out if self.bias is None else out + self.bias.to(out.dtype)), None


def full_layout(space: StructureSpace) -> list[LayerKeep]:
    g = space.geometry
    return [
        LayerKeep(tuple(range(g.num_heads)), tuple(range(g.num_kv_heads)), tuple(range(g.intermediate_size)))
        for _ in range(g.num_layers)
    ]


def head_rows(positions: Sequence[int], width: int) -> torch.Tensor:
    """Row indices of whole heads (``width`` rows each) at the given positions."""
    pos = torch.as_tensor(list(positions), dtype=torch.long)
    return (pos[:, None] * width + torch.arange(width)[None, :]).reshape(-1)


def _positions(present: Sequence[int], wanted: Sequence[int]) -> list[int]:
    lookup = {orig: i for i, orig in enumerate(present)}
    return [lookup[w] for w in wanted]


@torch.no_grad()
def slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> None:
    """Keep ``index`` along ``dim`` (0 = output rows, 1 = input columns) of a Linear, in place."""
    weight = linear.weight
    index = index.to(weight.device)
    linear.weight = nn.Parameter(weight.index_select(dim, index).contiguous(), requires_grad=weight.requires_grad)
    if dim == 0:
        linear.out_features = int(index.numel())
        if linear.bias is not None:
            linear.bias = nn.Parameter(
                linear.bias.index_select(0, index).contiguous(), requires_grad=linear.bias.requires_grad
            )
    else:
        linear.in_features = int(index.numel())


def kv_expand_index(space: StructureSpace, keep: LayerKeep) -> list[int] | None:
    """Map from kept query head to the position of its KV head, or None when groups are uniform."""
    g = space.geometry
    kv_of = [h // g.group_size for h in keep.heads]
    position = _positions(keep.kv_heads, kv_of)
    counts = np.bincount(position, minlength=len(keep.kv_heads)) if position else np.zeros(0)
    if len(counts) and (counts == counts[0]).all():
        return None
    return position


def _set_attention_groups(attn: nn.Module, space: StructureSpace, keep: LayerKeep) -> None:
    """Point each kept query head at its KV head: uniform repeat when possible, else expand."""
    expand = kv_expand_index(space, keep)
    head_dim = space.geometry.head_dim
    for name in ("k_proj", "v_proj"):
        linear = getattr(attn, name)
        if isinstance(linear, KVExpandLinear):
            plain = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
            plain.weight, plain.bias = linear.weight, linear.bias
            linear = plain
        if expand is not None:
            linear = KVExpandLinear.from_linear(linear, head_dim, expand)
        setattr(attn, name, linear)
    attn.num_key_value_groups = 1 if expand is not None else len(keep.heads) // max(1, len(keep.kv_heads))


@torch.no_grad()
def slice_(
    model: nn.Module,
    adapter: DecoderAdapter,
    space: StructureSpace,
    layout: Sequence[LayerKeep],
    keep: np.ndarray,
) -> list[LayerKeep]:
    """Remove every structure that ``keep`` drops from a model whose current layout is ``layout``.

    ``keep`` must be a subset of what the layout holds. Returns the new layout.
    """
    target = space.layer_keep(keep)
    head_dim = space.geometry.head_dim
    layers = adapter.layers(model)
    for i, (now, new) in enumerate(zip(layout, target, strict=True)):
        layer = layers[i]
        if new.heads != now.heads or new.kv_heads != now.kv_heads:
            if not new.heads:
                if now.heads:
                    adapter.set_attention_module(layer, NullAttention(i, head_dim))
            else:
                attn = adapter.attention_module(layer)
                lin = adapter.attention(layer)
                q_rows = head_rows(_positions(now.heads, new.heads), head_dim)
                kv_rows = head_rows(_positions(now.kv_heads, new.kv_heads), head_dim)
                slice_linear(lin.q, q_rows, 0)
                slice_linear(lin.k, kv_rows, 0)
                slice_linear(lin.v, kv_rows, 0)
                slice_linear(lin.o, q_rows, 1)
                _set_attention_groups(attn, space, new)
        if new.channels != now.channels:
            mlp = adapter.mlp(layer)
            index = torch.as_tensor(_positions(now.channels, new.channels), dtype=torch.long)
            slice_linear(mlp.gate, index, 0)
            slice_linear(mlp.up, index, 0)
            slice_linear(mlp.down, index, 1)
    return target


@torch.no_grad()
def mask_(model: nn.Module, adapter: DecoderAdapter, space: StructureSpace, keep: np.ndarray) -> None:
    """Zero, in a dense model, the weights of every structure that ``keep`` drops."""
    g = space.geometry
    layers = adapter.layers(model)
    q_keep, kv_keep = space.head_and_kv_keep(keep)
    _, ch_keep = space.as_grid(np.asarray(keep, bool))
    for i, layer in enumerate(layers):
        lin = adapter.attention(layer)
        q_dead = head_rows(np.flatnonzero(~q_keep[i]), g.head_dim)
        kv_dead = head_rows(np.flatnonzero(~kv_keep[i]), g.head_dim)
        for linear, rows, dim in ((lin.q, q_dead, 0), (lin.k, kv_dead, 0), (lin.v, kv_dead, 0), (lin.o, q_dead, 1)):
            _zero(linear, rows, dim)
        mlp = adapter.mlp(layer)
        dead = torch.as_tensor(np.flatnonzero(~ch_keep[i]), dtype=torch.long)
        for linear, dim in ((mlp.gate, 0), (mlp.up, 0), (mlp.down, 1)):
            _zero(linear, dead, dim)


def apply_keep(
    model: nn.Module,
    adapter: DecoderAdapter,
    space: StructureSpace,
    layout: Sequence[LayerKeep],
    keep: np.ndarray,
    physical: bool,
) -> list[LayerKeep]:
    """Remove what ``keep`` drops: sliced out (``physical``) or zeroed in place; returns the new layout.

    A masked model keeps its dense layout, so the layout returned then is the one given.
    """
    if physical:
        return slice_(model, adapter, space, layout, keep)
    mask_(model, adapter, space, keep)
    return list(layout)


def _zero(linear: nn.Linear, index: torch.Tensor, dim: int) -> None:
    if index.numel() == 0:
        return
    index = index.to(linear.weight.device)
    linear.weight.index_fill_(dim, index, 0.0)
    if dim == 0 and linear.bias is not None:
        linear.bias.index_fill_(0, index, 0.0)


def linear_weight_count(model: nn.Module, adapter: DecoderAdapter) -> int:
    """Decoder linear weights physically present (the quantity parameter sparsity is measured on)."""
    total = 0
    for layer in adapter.layers(model):
        if not isinstance(adapter.attention_module(layer), NullAttention):
            lin = adapter.attention(layer)
            total += sum(m.weight.numel() for m in (lin.q, lin.k, lin.v, lin.o))
        mlp = adapter.mlp(layer)
        total += sum(m.weight.numel() for m in (mlp.gate, mlp.up, mlp.down))
    return total
