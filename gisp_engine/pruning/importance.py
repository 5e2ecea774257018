"""First-order importance ``S = Σ |W ⊙ ḡ|`` per head and channel, without a gradient buffer.

Every scored weight gets a post-accumulate-grad hook. When the last micro-batch's
gradient of that weight is ready, the hook reduces ``|W ⊙ ḡ|`` to one number per structure
and frees the gradient at once. With one micro-batch no gradient outlives its hook; with
several, the micro-batch gradients of the *scored* weights are summed first (the absolute
value must be taken of the mean gradient), still freed at the last one: in ``.grad`` for a
float32 model, and in a float32 sum for a bfloat16/float16 one (a sum of tens of bf16
gradients in bf16 loses precision; the float32 sum costs 4 bytes per scored weight).
Weights that are never scored (embeddings, norms, protected layers, shared K/V under the
``query`` policy) do not ask for gradients at all.

Under ``torch.distributed`` (see ``distributed.py``) each rank runs its share of the
micro-batches, and each scored weight's gradient sum is all-reduced (float32) inside its hook
before ``|W ⊙ ḡ|`` is taken. The all-reduces are issued in one fixed order on every rank
(the order of a backward pass): a gradient that is ready early waits for its turn, and a rank
with no micro-batch contributes zeros.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..core.progress import ProgressCallback, ProgressEvent, null_progress
from ..model.adapters import DecoderAdapter
from ..model.structures import LayerKeep, StructureSpace
from ..model.surgery import NullAttention
from . import distributed
from .objectives import Objective


@dataclass
class ScoreResult:
    raw: np.ndarray  # (space.size,) float64; NaN where a structure is not present or not scored
    loss: float  # the objective's value on the model as it was scored


def _head_reduce(t: torch.Tensor, head_dim: int, dim: int) -> torch.Tensor:
    """Sum a |W⊙G| tensor to one value per head along ``dim`` (0 = rows, 1 = columns)."""
    if t.dim() == 1:
        return t.view(-1, head_dim).sum(1)
    return t.sum(1 - dim).view(-1, head_dim).sum(1)


class ScoredWeight:
    """One scored tensor: how its gradient reduces to structures of one layer."""

    def __init__(self, param: nn.Parameter, layer: int, dim: int, per_head: int | None, units: torch.Tensor):
        self.param, self.layer, self.dim, self.per_head, self.units = param, layer, dim, per_head, units


def scored_targets(
    model, adapter: DecoderAdapter, space: StructureSpace, layout: Sequence[LayerKeep], layers: Sequence[int]
) -> list[ScoredWeight]:
    g = space.geometry
    out: list[ScoredWeight] = []
    for i in layers:
        layer = adapter.layers(model)[i]
        keep = layout[i]
        if keep.heads and not isinstance(adapter.attention_module(layer), NullAttention):
            lin = adapter.attention(layer)
            if space.gqa == "query":
                q_units = torch.tensor(keep.heads)
                kv_units = torch.tensor(keep.kv_heads) if not g.is_gqa else None  # MHA: a head owns its K/V
            else:
                q_units = torch.tensor([h // g.group_size for h in keep.heads])
                kv_units = torch.tensor(keep.kv_heads)
            for linear, dim, units in (
                (lin.q, 0, q_units),
                (lin.o, 1, q_units),
                (lin.k, 0, kv_units),
                (lin.v, 0, kv_units),
            ):
                if units is None:
                    continue
                out.append(ScoredWeight(linear.weight, i, dim, g.head_dim, units))
                if dim == 0 and linear.bias is not None:
                    out.append(ScoredWeight(linear.bias, i, 0, g.head_dim, units))
        if keep.channels:
            mlp = adapter.mlp(layer)
            units = space.head_units + torch.tensor(keep.channels)
            for linear, dim in ((mlp.gate, 0), (mlp.up, 0), (mlp.down, 1)):
                out.append(ScoredWeight(linear.weight, i, dim, None, units))
    return out


class _GradientSums:
    """Where each scored tensor's gradient goes, micro-batch after micro-batch, until it becomes scores.

    A hook per tensor (``hook``) keeps its gradient (in ``.grad``, or in float32 ``sums`` with ``wide_sums``) until
    the last micro-batch (``last``), then hands it on: to ``add_scores`` at once, or under torch.distributed to
    ``pending``, all-reduced in one fixed order on every rank (``reduce_in_turn``: a backward pass's own order, layers
    from the last, MLP before attention, o_proj first in it, so that a gradient rarely waits).
    """

    def __init__(self, targets: list[ScoredWeight], space: StructureSpace, wide_sums: bool, distributed_run: bool):
        self.targets, self.space, self.wide_sums, self.distributed_run = targets, space, wide_sums, distributed_run
        self.acc: dict[int, torch.Tensor] = {}  # layer -> float64 score per structure of the layer
        self.sums: dict[int, torch.Tensor] = {}  # float32 gradient sums (wide_sums only), freed at the last micro-batch
        self.pending: dict[int, torch.Tensor] = {}
        self.order = sorted(
            range(len(targets)),
            key=lambda i: (
                -targets[i].layer,
                0 if targets[i].per_head is None else 1 if targets[i].dim == 1 else 2,
                -i,
            ),
        )
        self.turn = 0
        self.last = False

    def add_scores(self, i: int, grad: torch.Tensor) -> None:
        """Σ|W⊙ḡ| of tensor ``i`` reduced to its structures, added to its layer's scores; its gradient freed."""
        t = self.targets[i]
        prod = (t.param.detach().float() * grad.float()).abs_()
        per_unit = prod.sum(1 - t.dim) if t.per_head is None else _head_reduce(prod, t.per_head, t.dim)
        del prod
        layer_acc = self.acc.setdefault(
            t.layer, torch.zeros(self.space.per_layer, dtype=torch.float64, device=per_unit.device)
        )
        layer_acc.index_add_(0, t.units.to(per_unit.device), per_unit.double())
        t.param.grad = None

    def reduce_in_turn(self, flush: bool = False) -> None:
        """All-reduce the pending gradients whose turn has come (``flush``: all, zeros for those this rank lacks)."""
        while self.turn < len(self.order):
            i = self.order[self.turn]
            grad = self.pending.pop(i, None)
            if grad is None:
                if not flush:
                    return
                p = self.targets[i].param  # no micro-batch here (or no gradient): this rank adds zeros
                grad = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            if grad.dtype not in (torch.float32, torch.float64):
                grad = grad.float()
            distributed.all_reduce_sum_(grad)
            self.add_scores(i, grad)
            self.turn += 1

    def hook(self, i: int):
        def after_accumulate(param: torch.Tensor) -> None:
            if self.wide_sums:
                total = self.sums.get(i)
                if total is None:
                    self.sums[i] = param.grad.float()
                else:
                    total.add_(param.grad)
                param.grad = None  # the next micro-batch's gradient lands in a fresh .grad
                if not self.last:
                    return
                grad = self.sums.pop(i)
            elif not self.last:
                return  # accumulate in .grad until the last micro-batch
            else:
                grad = param.grad
            if self.distributed_run:
                self.pending[i] = grad
                self.reduce_in_turn()
            else:
                self.add_scores(i, grad)

        return after_accumulate

    def clear(self) -> None:
        self.sums.clear()
        self.pending.clear()


@contextlib.contextmanager
def _gradients_only_for(model: nn.Module, targets: list[ScoredWeight], sums: _GradientSums):
    """Inside: only the scored tensors take gradients, each with its hook; after: the model's flags as they were."""
    saved = {p: p.requires_grad for p in model.parameters()}
    handles = []
    try:
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None
        for i, t in enumerate(targets):
            t.param.requires_grad_(True)
            handles.append(t.param.register_post_accumulate_grad_hook(sums.hook(i)))
        yield
    finally:
        for h in handles:
            h.remove()
        for p, flag in saved.items():
            p.requires_grad_(flag)
            p.grad = None
        sums.clear()


def _per_structure(acc: dict[int, torch.Tensor], space: StructureSpace, layout: Sequence[LayerKeep]) -> np.ndarray:
    """The layers' scores laid out over the whole space: NaN for every structure not present (or not scored)."""
    raw = np.full(space.size, np.nan)
    for layer, values in acc.items():
        start = layer * space.per_layer
        present = np.zeros(space.per_layer, bool)
        keep = layout[layer]
        if space.gqa == "query":
            present[list(keep.heads)] = True
        else:
            present[list(keep.kv_heads)] = True
        present[space.head_units + np.asarray(keep.channels, dtype=np.int64)] = True
        layer_raw = values.cpu().numpy()
        raw[start : start + space.per_layer] = np.where(present, layer_raw, np.nan)
    return raw


def score_structures(
    model: nn.Module,
    adapter: DecoderAdapter,
    space: StructureSpace,
    layout: Sequence[LayerKeep],
    objective: Objective,
    scored_layers: Sequence[int],
    progress: ProgressCallback = null_progress,
    step: int | None = None,
    total_steps: int | None = None,
    wide_sums: bool | None = None,
) -> ScoreResult:
    """Raw scores ``Σ|W⊙ḡ|`` of every structure present in ``scored_layers``, and the loss.

    ``wide_sums`` (default: when the model is bf16/fp16 and there are several micro-batches)
    sums the micro-batch gradients in float32; ``False`` keeps the model's dtype (the old way,
    kept for the precision test and benchmark).
    """
    ctx = distributed.context()
    targets = scored_targets(model, adapter, space, layout, scored_layers)
    batches = distributed.shard(objective.batches(), ctx)
    if wide_sums is None:
        low_precision = any(t.param.dtype in (torch.bfloat16, torch.float16) for t in targets)
        wide_sums = low_precision and len(batches) > 1
    sums = _GradientSums(targets, space, wide_sums, ctx.active)
    total_loss = 0.0
    with _gradients_only_for(model, targets, sums):
        progress(ProgressEvent("score", 0, len(batches), step, total_steps))
        for b, batch in enumerate(batches):
            sums.last = b == len(batches) - 1
            loss = objective.loss(model, batch)
            loss.backward()
            total_loss += float(loss.detach())
            progress(ProgressEvent("score", b + 1, len(batches), step, total_steps))
        if ctx.active:
            sums.reduce_in_turn(flush=True)
            total_loss = _sum_over_ranks(total_loss)
    raw = _per_structure(sums.acc, space, layout)
    if ctx.active:  # bitwise the same scores on every rank, so that every rank removes the same structures
        shared = distributed.broadcast_tensor_(torch.from_numpy(np.append(raw, total_loss)))
        raw, total_loss = shared[:-1].numpy(), float(shared[-1])
    return ScoreResult(raw=raw, loss=total_loss)


def _sum_over_ranks(value: float) -> float:
    return float(distributed.all_reduce_sum_(torch.tensor([value], dtype=torch.float64)))


@torch.no_grad()
def objective_value(model: nn.Module, objective: Objective) -> float:
    """The objective on the current model, without gradients (each rank its share of the micro-batches)."""
    value = float(sum(float(objective.loss(model, batch)) for batch in distributed.shard(objective.batches())))
    return _sum_over_ranks(value) if distributed.context().active else value
