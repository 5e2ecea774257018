"""Exporting a point of a trajectory as one GGUF file, for llama.cpp, Ollama and LM Studio.

* **per-layer** (default): exactly the trajectory's subnetwork, written as llama.cpp's ``deci``
  architecture (made for Nemotron-51B), which builds every layer at its own width from per-layer
  ``head_count``, ``head_count_kv`` and ``feed_forward_length`` arrays. Llama, Mistral and Qwen2.
* **uniform** (``uniform=True``): every layer cut to the same widths (``widths.uniform_keep_mask``,
  as the transformers uniform export), written as the family's stock architecture (``llama`` for
  Llama and Mistral, ``qwen2``, ``qwen3``, ``gemma3``).

What llama.cpp needs that the subnetwork does not give as it is:

* within a layer, query head ``h`` reads KV head ``h // (n_head / n_head_kv)``: equal contiguous groups.
  The ``query`` GQA policy leaves uneven ones, so each layer is made even (``even_groups``): a KV head
  with more query heads than the group size is written again, a group with fewer gets dummy query
  heads (zero ``q`` rows, zero ``o_proj`` columns, so they add nothing). The group size chosen writes the
  fewest weights; one KV head per query head is one of the candidates. A layer whose head count is
  not a multiple of its KV head count aborts the whole llama.cpp process: the writer checks that it
  never writes one;
* ``deci`` skips a layer's whole output when it has no MLP channels (``n_ff == 0``), so a layer that
  keeps heads but no channels gets one zero channel; a layer with no heads is written without attention;
* q/k rows are permuted into llama.cpp's rotary layout (``llama``, ``deci``), Gemma's norms get their +1,
  Llama 3 RoPE scaling becomes ``rope_freqs``; tied embeddings write no ``output`` tensor;
* FLAP's bias compensation becomes ``attn_output.bias`` and ``ffn_down.bias``, which ``deci`` and ``llama``
  read (a layer with no heads left carries its constant through one zero head); ``qwen2``, ``qwen3`` and
  ``gemma3`` have no such biases, so a uniform FLAP export of those is refused.

Outtypes ``f32``, ``f16``, ``bf16`` and ``q8_0`` are written by ``gguf`` (tensors whose rows do not split
into Q8_0 blocks stay F16, as in llama.cpp's converter); the k-quants (``q4_k_m``, ...) are made from
the float file by llama.cpp's own quantizer (``gisp_engine.model.llamacpp``). The tokenizer is written by
:mod:`gisp_engine.export.gguf_vocab`.

The folder holds the ``.gguf``, an Ollama ``Modelfile``, a model card (``README.md`` with a Hugging
Face metadata header: base model, tags, sparsity, trajectory key, the evaluations the cache
remembers for that step) and the manifest (``kind: gguf``; ``verify_export`` checks it). Written
atomically; exporting slices the loaded model in place, as the transformers export does.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.errors import GispError
from ..core.fsutil import TMP_MARK, atomic_write_bytes, staging_dir
from ..core.progress import ProgressCallback, null_progress
from ..evaluation.checks import load_evaluations
from ..model import llamacpp
from ..model.loading import LoadedModel
from ..model.structures import LayerKeep
from ..model.surgery import NullAttention, full_layout, kv_expand_index, linear_weight_count, slice_
from ..pruning.methods import ALIGN_RULE, check_align
from ..pruning.subnetwork import add_biases, compensates, compensation_biases, resolve_step
from ..pruning.trajectory import Trajectory
from .folder import GGUF, MANIFEST, hash_files, manifest_head, manifest_json, param_count, start_export
from .gguf_vocab import VocabRecord, write_vocab
from .widths import UNIFORM_RULE, aligned_keep_mask, config_accepts, uniform_keep_mask, weight_norms

FLOAT_OUTTYPES = ("f32", "f16", "bf16", "q8_0")  # written by gguf-py
OUTTYPES = FLOAT_OUTTYPES + tuple(llamacpp.QUANT_TYPES)  # the rest: llama.cpp's quantizer
DEFAULT_OUTTYPE = "f16"
PER_LAYER_ARCH = "deci"
NORM_ROPE_ARCHS = ("llama", "deci")  # rope on adjacent pairs: q/k rows permuted from transformers' halves
Q8_BLOCK = 32
# the hub id of each embedded model's original checkpoint (the model card's base_model)
EMBEDDED_BASE = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct", "gemma3-270m": "google/gemma-3-270m"}


@dataclass(frozen=True)
class GGUFFamily:
    """What llama.cpp's stock code for a family can hold."""

    arch: str  # the stock architecture of a uniform export
    per_layer: str | None = None  # why a per-layer (deci) export cannot be written; None: it can
    narrow_arch: str | None = None  # the arch when fewer query heads than the hidden size remain (qwen2's
    # q/o shapes are the hidden size's; llama reads the same weights, biases included)
    output_biases: bool = False  # the stock arch reads attn_output.bias and ffn_down.bias (FLAP, uniform)
    norm_shift: float = 0.0  # added to every norm weight (Gemma's RMSNorm scales by 1 + w)


FAMILIES = {
    "llama": GGUFFamily("llama", output_biases=True),
    "mistral": GGUFFamily("llama", output_biases=True),
    "qwen2": GGUFFamily("qwen2", narrow_arch="llama"),
    "qwen3": GGUFFamily(
        "qwen3", per_layer="Qwen3's q/k norms have no place in llama.cpp's per-layer architecture (deci)"
    ),
    "gemma3": GGUFFamily(
        "gemma3",
        norm_shift=1.0,
        per_layer="Gemma 3's q/k norms, extra norms and GELU MLP have no place in llama.cpp's "
        "per-layer architecture (deci)",
    ),
}


# ---- refusals, before anything is loaded ----------------------------------------------------
def check_request(family: str, outtype: str, uniform: bool, compensate: bool) -> None:
    """Refuse, in one line, what cannot be written (the CLI calls this before loading the model)."""
    if outtype not in OUTTYPES:
        raise GispError(f"unknown --outtype {outtype!r}: use one of {', '.join(OUTTYPES)}")
    if family not in FAMILIES:
        raise GispError(f"a {family} model cannot be written as GGUF here: only {', '.join(FAMILIES)}")
    spec = FAMILIES[family]
    if not uniform and spec.per_layer:
        raise GispError(f"{spec.per_layer}: export it with --uniform (llama.cpp's stock {spec.arch})")
    if uniform and compensate and not spec.output_biases:
        raise GispError(
            f"llama.cpp's {spec.arch} has no o_proj/down_proj biases for FLAP's bias compensation: "
            "export per-layer, or add --no-bias-compensation"
        )
    if outtype in llamacpp.QUANT_TYPES:
        llamacpp.runtime()  # the k-quants need llama.cpp itself


# ---- even GQA groups ------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerPlan:
    """How one layer is written: which kept heads go where, and what is added for llama.cpp."""

    q_slots: tuple[int, ...]  # per query head written: position among the kept query heads, -1 a dummy
    kv_slots: tuple[int, ...]  # per KV head written: position among the kept KV heads, -1 a zero head
    channels: int  # MLP channels written
    zero_channel: bool  # one zero channel stands in for none (deci skips a layer with n_ff = 0)

    @property
    def n_head(self) -> int:
        return len(self.q_slots)

    @property
    def n_head_kv(self) -> int:
        return len(self.kv_slots)

    def to_dict(self) -> dict:
        return {
            "head_count": self.n_head,
            "head_count_kv": self.n_head_kv,
            "feed_forward_length": self.channels,
            "q_slots": list(self.q_slots),
            "kv_slots": list(self.kv_slots),
            "dummy_heads": self.q_slots.count(-1),
            "zero_channel": self.zero_channel,
        }


def even_groups(kv_of_head: Sequence[int], n_kv: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Query and KV slots in equal contiguous groups, for query heads mapped to KV heads ``kv_of_head``.

    For a group size ``g``, KV head ``j`` with ``c_j`` query heads is written ``ceil(c_j / g)`` times and
    every copy gets ``g`` query slots (its heads, then dummies). The ``g`` written is the one with the
    fewest heads in all (a query head and a KV head cost the same weights: 2 x head_dim x hidden), then
    the fewest KV heads (the smaller cache). ``g = 1`` is one KV head per query head.
    """
    members = [[p for p, j in enumerate(kv_of_head) if j == kv] for kv in range(n_kv)]
    if not kv_of_head:
        return (), ()
    best = None
    for g in range(1, max(len(m) for m in members) + 1):
        kv_total = sum(math.ceil(len(m) / g) for m in members)
        key = (g * kv_total + kv_total, kv_total)
        if best is None or key < best[0]:
            best = (key, g)
    g = best[1]
    q_slots, kv_slots = [], []
    for j, heads in enumerate(members):
        for start in range(0, len(heads), g):
            chunk = heads[start : start + g]
            kv_slots.append(j)
            q_slots.extend(chunk + [-1] * (g - len(chunk)))
    return tuple(q_slots), tuple(kv_slots)


def layer_plan(space, keep: LayerKeep, attention_bias: bool, down_bias: bool) -> LayerPlan:
    """The plan of one sliced layer (``keep``: its kept structures)."""
    if keep.heads:
        expand = kv_expand_index(space, keep)
        per_kv = len(keep.heads) // len(keep.kv_heads)
        kv_of = expand if expand is not None else [p // per_kv for p in range(len(keep.heads))]
        q_slots, kv_slots = even_groups(kv_of, len(keep.kv_heads))
    elif attention_bias:  # FLAP's constant for a layer with no heads: carried by one zero head
        q_slots, kv_slots = (-1,), (-1,)
    else:
        q_slots, kv_slots = (), ()
    zero_channel = not keep.channels and bool(q_slots or down_bias)
    return LayerPlan(q_slots, kv_slots, len(keep.channels) or int(zero_channel), zero_channel)


def _check_plans(plans: list[LayerPlan]) -> None:
    """What would make llama.cpp abort or drop a layer's output: never written."""
    for i, p in enumerate(plans):
        if (p.n_head == 0) != (p.n_head_kv == 0) or (p.n_head and p.n_head % p.n_head_kv):
            raise GispError(
                f"internal error: layer {i} would have {p.n_head} query heads over {p.n_head_kv} KV "
                "heads, which llama.cpp cannot run"
            )
        if p.n_head and not p.channels:
            raise GispError(f"internal error: layer {i} keeps heads but no MLP channel (deci would drop them)")


# ---- tensors --------------------------------------------------------------------------------
def _pick_heads(t: torch.Tensor, slots: Sequence[int], head_dim: int, dim: int = 0) -> torch.Tensor:
    """Whole heads of ``t`` (rows, or columns when ``dim=1``) in ``slots`` order; -1 gives zeros."""
    t = t.detach().float()
    if tuple(slots) == tuple(range(t.shape[dim] // head_dim)):  # every head, in place: nothing to move
        return t
    if dim == 1:
        t = t.T
    offsets = torch.arange(head_dim)
    real = torch.tensor([i for i, s in enumerate(slots) if s >= 0], dtype=torch.long)
    source = torch.tensor([s for s in slots if s >= 0], dtype=torch.long)
    out = t.new_zeros(len(slots) * head_dim, *t.shape[1:])
    if len(real):
        rows = lambda heads: (heads[:, None] * head_dim + offsets).reshape(-1)  # noqa: E731
        out.index_copy_(0, rows(real), t.index_select(0, rows(source)))
    return out.T if dim == 1 else out


def _rope_permute(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """transformers' rotary halves -> llama.cpp's adjacent pairs (its converter's ``permute``), per head."""
    return t.reshape(n_head, 2, t.shape[0] // n_head // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)


def _tensor_name(kind, layer: int | None = None, suffix: str = "weight") -> str:
    import gguf

    return gguf.TENSOR_NAMES[kind].format(bid=layer) + "." + suffix


class _Tensors:
    """Tensors added to a GGUF writer in one outtype (1-D ones always F32), with what fell back."""

    def __init__(self, writer, outtype: str):
        self.writer = writer
        self.outtype = outtype
        self.fallback: list[str] = []
        self.linear = 0  # decoder linear weights written

    def add(self, name: str, tensor: torch.Tensor, linear: bool = False) -> None:
        import gguf
        from gguf import GGMLQuantizationType as Q

        data = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
        if linear:
            self.linear += data.size
        if data.ndim == 1 or self.outtype == "f32":
            self.writer.add_tensor(name, data, raw_dtype=Q.F32)
        elif self.outtype == "f16" or (self.outtype == "q8_0" and data.shape[-1] % Q8_BLOCK):
            if self.outtype == "q8_0":
                self.fallback.append(name)
            self.writer.add_tensor(name, data.astype(np.float16), raw_dtype=Q.F16)
        else:
            qtype = Q.BF16 if self.outtype == "bf16" else Q.Q8_0
            self.writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def _layer_tensors(
    out: _Tensors, i: int, layer, loaded: LoadedModel, plan: LayerPlan, head_dim: int, permute: bool
) -> None:
    """q/k/v/o and gate/up/down of layer ``i`` (with their biases), written to ``plan``."""
    from gguf import MODEL_TENSOR as T

    adapter, hidden = loaded.adapter, loaded.geometry.hidden_size
    attn = adapter.attention_module(layer)
    if plan.n_head:
        if isinstance(attn, NullAttention):  # FLAP's constant alone: one zero head and the bias
            zero = torch.zeros(head_dim, hidden)
            q = k = v = zero
            o, o_bias, biases = zero.T, attn.bias, {}
        else:
            lin = adapter.attention(layer)
            q = _pick_heads(lin.q.weight, plan.q_slots, head_dim)
            k = _pick_heads(lin.k.weight, plan.kv_slots, head_dim)
            v = _pick_heads(lin.v.weight, plan.kv_slots, head_dim)
            o = _pick_heads(lin.o.weight, plan.q_slots, head_dim, dim=1)
            o_bias = lin.o.bias
            biases = {
                kind: _pick_heads(m.bias, slots, head_dim)
                for kind, m, slots in (
                    (T.ATTN_Q, lin.q, plan.q_slots),
                    (T.ATTN_K, lin.k, plan.kv_slots),
                    (T.ATTN_V, lin.v, plan.kv_slots),
                )
                if m.bias is not None
            }
        if permute:
            q, k = _rope_permute(q, plan.n_head), _rope_permute(k, plan.n_head_kv)
            for kind, n in ((T.ATTN_Q, plan.n_head), (T.ATTN_K, plan.n_head_kv)):
                if kind in biases:
                    biases[kind] = _rope_permute(biases[kind], n)
        for kind, w in ((T.ATTN_Q, q), (T.ATTN_K, k), (T.ATTN_V, v), (T.ATTN_OUT, o)):
            out.add(_tensor_name(kind, i), w, linear=True)
        for kind, b in biases.items():
            out.add(_tensor_name(kind, i, "bias"), b)
        if o_bias is not None:
            out.add(_tensor_name(T.ATTN_OUT, i, "bias"), o_bias)
    if plan.channels:
        mlp = adapter.mlp(layer)
        if plan.zero_channel:
            gate = up = torch.zeros(1, hidden)
            down = torch.zeros(hidden, 1)
        else:
            gate, up, down = mlp.gate.weight, mlp.up.weight, mlp.down.weight
        for kind, w in ((T.FFN_GATE, gate), (T.FFN_UP, up), (T.FFN_DOWN, down)):
            out.add(_tensor_name(kind, i), w, linear=True)
        for kind, m in ((T.FFN_GATE, mlp.gate), (T.FFN_UP, mlp.up)):
            if m.bias is not None and not plan.zero_channel:
                out.add(_tensor_name(kind, i, "bias"), m.bias)
        if mlp.down.bias is not None:
            out.add(_tensor_name(T.FFN_DOWN, i, "bias"), mlp.down.bias)


def _other_tensors(
    out: _Tensors,
    loaded: LoadedModel,
    arch,
    plans: list[LayerPlan],
    linears: set[int],
    n_tokens: int,
    norm_shift: float,
) -> None:
    """Embeddings, norms and the LM head: named by gguf's own map of transformers names, as the converter does."""
    import gguf
    from gguf import MODEL_TENSOR as T

    names = gguf.get_tensor_name_map(arch, len(plans))
    skip = {_tensor_name(T.ATTN_NORM, i) for i, p in enumerate(plans) if not p.n_head}
    skip |= {_tensor_name(T.FFN_NORM, i) for i, p in enumerate(plans) if not p.channels}
    for name, param in loaded.model.named_parameters():  # tied weights once
        if id(param) in linears:
            continue
        full = names.get_name(name, try_suffixes=(".weight", ".bias"))  # with the suffix
        if full is None:
            raise GispError(f"internal error: no GGUF name for {name}")
        if full in skip:
            continue
        tensor = param.detach().float()
        if full in (_tensor_name(T.TOKEN_EMBD), _tensor_name(T.OUTPUT)):
            if tensor.shape[0] < n_tokens:
                raise GispError(f"{name} has {tensor.shape[0]} rows for a tokenizer of {n_tokens} tokens")
            tensor = tensor[:n_tokens]  # rows beyond the tokenizer's tokens are never used (Gemma's padding)
        if norm_shift and name.endswith("norm.weight"):
            tensor = tensor + norm_shift
        out.add(full, tensor)


def _linear_ids(loaded: LoadedModel) -> set[int]:
    ids = set()
    for layer in loaded.adapter.layers(loaded.model):
        attn = loaded.adapter.attention_module(layer)
        if isinstance(attn, NullAttention):
            ids |= {id(p) for p in attn.parameters()}
        else:
            lin = loaded.adapter.attention(layer)
            ids |= {id(p) for m in (lin.q, lin.k, lin.v, lin.o) for p in m.parameters()}
        mlp = loaded.adapter.mlp(layer)
        ids |= {id(p) for m in (mlp.gate, mlp.up, mlp.down) for p in m.parameters()}
    return ids


# ---- hyperparameters ------------------------------------------------------------------------
def _rope(config) -> tuple[dict, dict]:
    params = getattr(config, "rope_parameters", None) or {"rope_theta": getattr(config, "rope_theta", 10000.0)}
    full = params.get("full_attention", params)
    return full, params.get("sliding_attention", {})


def _llama3_rope_freqs(rope: dict, head_dim: int) -> torch.Tensor:
    """Llama 3's frequency factors (the converter's ``rope_freqs``)."""
    base = rope.get("rope_theta", 10000.0)
    freqs = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(factors, dtype=torch.float32)


def _write_hparams(
    writer, out: _Tensors, config, g, arch: str, plans: list[LayerPlan], uniform: bool, n_tokens: int
) -> None:
    import gguf

    heads = [p.n_head for p in plans]
    kv = [p.n_head_kv for p in plans]
    ff = [p.channels for p in plans]
    one = (lambda xs: xs[0]) if uniform else (lambda xs: xs)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(g.hidden_size)
    writer.add_block_count(g.num_layers)
    writer.add_feed_forward_length(one(ff))
    writer.add_head_count(one(heads))
    writer.add_head_count_kv(one(kv))
    writer.add_key_length(g.head_dim)
    writer.add_value_length(g.head_dim)
    writer.add_rope_dimension_count(g.head_dim)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(n_tokens)  # the embedding rows written: one per token of the tokenizer
    rope, local = _rope(config)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    kind = rope.get("rope_type", "default")
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif kind == "llama3":
        out.add(_tensor_name(gguf.MODEL_TENSOR.ROPE_FREQS), _llama3_rope_freqs(rope, g.head_dim))
    elif kind != "default":
        raise GispError(f"RoPE scaling {kind!r} is not written into GGUF here (default, linear and llama3 are)")
    if arch == "gemma3":
        layer_types = getattr(config, "layer_types", None) or []
        if getattr(config, "sliding_window", None) and "sliding_attention" in layer_types:
            writer.add_sliding_window(int(config.sliding_window))
            writer.add_sliding_window_pattern([t == "sliding_attention" for t in layer_types])
            if "rope_theta" in local:
                writer.add_rope_freq_base_swa(float(local["rope_theta"]))
        # llama.cpp scales queries by 1/sqrt(head_dim) (by hidden/heads for the 62-layer 27B): no key for another
        scale = g.hidden_size / heads[0] if g.num_layers == 62 else g.head_dim
        if abs(float(getattr(config, "query_pre_attn_scalar", scale)) - scale) > 1e-6:
            raise GispError(
                f"query_pre_attn_scalar {config.query_pre_attn_scalar} is not the {scale} llama.cpp's "
                "gemma3 uses: it cannot be written as GGUF"
            )


# ---- the export -----------------------------------------------------------------------------
@dataclass
class GGUFExportResult:
    folder: Path
    manifest: dict

    @property
    def gguf_path(self) -> Path:
        return self.folder / self.manifest["gguf"]["file"]

    @property
    def step(self) -> int:
        return int(self.manifest["trajectory"]["step"])

    def summary(self) -> dict:
        m = self.manifest
        return {
            "path": str(self.folder),
            "gguf": str(self.gguf_path),
            "kind": m["kind"],
            "layout": m["gguf"]["layout"],
            "arch": m["gguf"]["arch"],
            "outtype": m["gguf"]["outtype"],
            "step": self.step,
            "param_sparsity": float(m["param_sparsity"]),
            "trajectory_param_sparsity": m["trajectory"]["param_sparsity"],
            "linear_params": m["linear_params"],
            "gguf_linear_params": m["gguf"]["linear_params"],
            "padding_overhead": m["gguf"]["padding_overhead"],
            "file_bytes": m["gguf"]["file_bytes"],
            "loads_with": m["loads_with"],
        }


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(text).name).strip("-.").lower() or "model"


def gguf_file_name(model_id: str, step: int, uniform: bool, outtype: str) -> str:
    return f"{_slug(model_id)}-gisp-step{step}{'-uniform' if uniform else ''}-{outtype}.gguf"


def export_gguf(
    loaded: LoadedModel,
    trajectory: Trajectory,
    step: int,
    out_dir: Path | str,
    uniform: bool = False,
    outtype: str = DEFAULT_OUTTYPE,
    progress: ProgressCallback = null_progress,
    bias_compensation: bool | None = None,
    align: int | None = None,
    n_threads: int | None = None,
) -> GGUFExportResult:
    """Write the subnetwork at ``step`` (or its uniform version) as a GGUF folder; slices ``loaded`` in place.

    ``bias_compensation``: FLAP's biases (default: on for FLAP trajectories). ``align``: every layer's MLP
    width rounded to a multiple of it, in the trajectory's order (``ALIGN_RULE``, as ``export_subnetwork``).
    ``n_threads``: llama.cpp's quantizer threads (k-quants).
    """
    compensate = compensates(trajectory, bias_compensation)
    check_request(loaded.adapter.family, outtype, uniform, compensate)
    if align is not None:
        check_align(align, trajectory.geometry.intermediate_size)
    start = start_export(loaded, trajectory, out_dir, progress, slices_in_place=True)
    report, space = start.report, trajectory.space
    step = resolve_step(trajectory, step=step)

    report(0, "choosing structures")
    widths = None
    if uniform:
        unscored = sorted({int(space.layer[i]) for i in np.flatnonzero(np.isnan(trajectory.score))})
        norms = weight_norms(loaded, space, unscored) if unscored else None
        keep, widths = uniform_keep_mask(trajectory, step, config_accepts(loaded.model.config), norms, align)
    else:
        keep = trajectory.keep_mask(step) if align is None else aligned_keep_mask(trajectory, step, align)
    arch = _arch(loaded, widths)
    biases = compensation_biases(loaded, trajectory, keep) if compensate else None  # from the dense weights

    report(1, "slicing")
    layout = slice_(loaded.model, loaded.adapter, space, full_layout(space), keep)
    if biases is not None:
        add_biases(loaded, biases)
    linear = int(space.linear_params_per_layer(keep).sum())
    if linear_weight_count(loaded.model, loaded.adapter) != linear:
        raise GispError("internal error: the sliced model's size does not match its keep-mask")
    plans = [
        layer_plan(space, lk, attention_bias=biases is not None and not lk.heads, down_bias=biases is not None)
        for lk in layout
    ]
    _check_plans(plans)
    if uniform and len({(p.n_head, p.n_head_kv, p.channels) for p in plans}) != 1:
        raise GispError("internal error: a uniform export with unequal layers")

    name = gguf_file_name(loaded.model_id, step, uniform, outtype)
    # the k-quants are made by llama.cpp from a float file in the loaded model's own precision
    float_type = (
        outtype
        if outtype in FLOAT_OUTTYPES
        else {torch.bfloat16: "bf16", torch.float16: "f16"}.get(loaded.dtype, "f32")
    )
    with staging_dir(start.out) as tmp:
        report(2, "writing GGUF")
        float_path = tmp / (name if float_type == outtype else f"{TMP_MARK}{float_type}.gguf")
        tensors, vocab = _write_file(float_path, loaded, trajectory, step, keep, plans, arch, float_type, uniform)
        if float_type != outtype:
            report(3, f"quantizing to {outtype}")
            llamacpp.quantize(float_path, tmp / name, outtype, n_threads)
            float_path.unlink()
        report(3, "writing the Modelfile and the model card")
        manifest = manifest_head(GGUF, _loads_with(name), loaded, trajectory)
        point = trajectory.steps[step]
        manifest["trajectory"].update(
            step=step,
            param_sparsity=point.param_sparsity,
            structural_ratio=point.structural_ratio,
            method=trajectory.meta.get("method"),
        )
        manifest.update(
            {
                "param_sparsity": space.param_sparsity(keep),
                "structural_ratio": float(1.0 - keep.mean()),
                "linear_params": linear,
                "dense_linear_params": space.total_linear_params(),
                "param_count": param_count(loaded.model),
                "dtype": str(loaded.dtype).removeprefix("torch."),
                "bias_compensation": compensate,
                "uniform": None if widths is None else {**widths.to_dict(), "rule": UNIFORM_RULE},
                "align": None
                if align is None
                else {"multiple": align, "rule": ALIGN_RULE, "intermediate_sizes": [len(lk.channels) for lk in layout]},
                "gguf": {
                    "file": name,
                    "arch": arch,
                    "layout": "uniform" if uniform else "per-layer",
                    "outtype": outtype,
                    "quantized_by": (
                        f"llama.cpp llama_model_quantize ({llamacpp.RUNTIME}) from {float_type}"
                        if float_type != outtype
                        else f"gguf {gguf_version()}"
                    ),
                    "q8_0_f16_fallback": tensors.fallback,
                    "tokenizer": vocab.to_dict(),
                    "linear_params": tensors.linear,
                    "padding_overhead": tensors.linear / linear - 1.0 if linear else 0.0,
                    "kv_heads": sum(p.n_head_kv for p in plans),
                    "file_bytes": (tmp / name).stat().st_size,
                },
                "layers": [{**lk.to_dict(), "gguf": plan.to_dict()} for lk, plan in zip(layout, plans)],
            }
        )
        (tmp / "Modelfile").write_text(_modelfile(name, manifest), encoding="utf-8")
        (tmp / "README.md").write_text(
            _model_card(loaded, manifest, _evaluations_at(trajectory, step)), encoding="utf-8"
        )
        report(4, "hashing")
        manifest["files"] = hash_files(tmp)
        atomic_write_bytes(tmp / MANIFEST, manifest_json(manifest).encode("utf-8"))
    report(5, "done")
    return GGUFExportResult(start.out, manifest)


def _arch(loaded: LoadedModel, widths) -> str:
    """The llama.cpp architecture written (checked before anything is sliced)."""
    spec, g = FAMILIES[loaded.adapter.family], loaded.geometry
    if widths is None:
        arch = PER_LAYER_ARCH
    elif spec.narrow_arch and widths.heads * g.head_dim != g.hidden_size:
        arch = spec.narrow_arch
    else:
        arch = spec.arch
    config = loaded.model.config
    act = getattr(config, "hidden_act", None) or getattr(config, "hidden_activation", None)
    if arch != "gemma3" and act not in ("silu", "swish"):
        raise GispError(f"llama.cpp's {arch} computes a SiLU MLP, this model's is {act!r}: it cannot be written")
    return arch


def _write_file(
    path: Path,
    loaded: LoadedModel,
    trajectory: Trajectory,
    step: int,
    keep: np.ndarray,
    plans: list[LayerPlan],
    arch: str,
    outtype: str,
    uniform: bool,
) -> tuple[_Tensors, VocabRecord]:
    """The GGUF file itself (``outtype``: one gguf writes): metadata, tokenizer, hyperparameters, tensors."""
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    writer.add_type("model")
    writer.add_name(f"{Path(loaded.model_id).name} GISP step {step}{' uniform' if uniform else ''}")
    writer.add_string("gisp.trajectory", str(trajectory.key or trajectory.path))
    writer.add_uint32("gisp.step", step)
    writer.add_float32("gisp.param_sparsity", float(trajectory.space.param_sparsity(keep)))
    writer.add_string("gisp.layout", "uniform" if uniform else "per-layer")
    tensors = _Tensors(writer, outtype)
    vocab = write_vocab(writer, loaded.model_id, loaded.folder, loaded.tokenizer, int(loaded.model.config.vocab_size))
    _write_hparams(writer, tensors, loaded.model.config, loaded.geometry, arch, plans, uniform, vocab.tokens)
    for i, (layer, plan) in enumerate(zip(loaded.adapter.layers(loaded.model), plans)):
        _layer_tensors(tensors, i, layer, loaded, plan, loaded.geometry.head_dim, arch in NORM_ROPE_ARCHS)
    arch_id = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    _other_tensors(
        tensors, loaded, arch_id, plans, _linear_ids(loaded), vocab.tokens, FAMILIES[loaded.adapter.family].norm_shift
    )
    file_types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    writer.add_file_type(file_types[outtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors, vocab


def write_vocab_gguf(model: str, path: Path | str, from_tokenizer_json: bool = False) -> VocabRecord:
    """A GGUF of ``model``'s tokenizer and dense hyperparameters only, no weights (the converter's
    ``--vocab-only``): llama.cpp tokenizes with it (``llamacpp.GGUFVocab``) without reading any weights."""
    import gguf
    from transformers import AutoTokenizer

    from ..model.loading import load_config

    folder, config, adapter = load_config(model)
    g = adapter.geometry(config)
    path = Path(path)
    arch = FAMILIES[adapter.family].arch if adapter.family in FAMILIES else "llama"
    dense = [
        LayerPlan(tuple(range(g.num_heads)), tuple(range(g.num_kv_heads)), g.intermediate_size, False)
    ] * g.num_layers
    scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix=TMP_MARK + path.name + "."))
    try:
        writer = gguf.GGUFWriter(scratch / path.name, arch)
        writer.add_type("vocab")
        vocab = write_vocab(
            writer, model, folder, AutoTokenizer.from_pretrained(folder), int(config.vocab_size), from_tokenizer_json
        )
        _write_hparams(writer, _Tensors(writer, "f32"), config, g, arch, dense, True, vocab.tokens)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(scratch / path.name, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return vocab


def gguf_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("gguf")


def _loads_with(name: str) -> str:
    return f"llama.cpp: llama-cli -m DIR/{name}; Ollama: ollama create NAME -f DIR/Modelfile"


# ---- the Modelfile and the model card ---------------------------------------------------------
def _evaluations_at(trajectory: Trajectory, step: int) -> list[dict]:
    rows = [r for r in load_evaluations(trajectory) if (r.get("identity") or {}).get("step") == step]
    return [
        {
            "task": r["identity"]["task"],
            "metric": r.get("metric"),
            "value": r.get("value"),
            "limit": r["identity"].get("limit"),
            "options": r["identity"].get("options"),
            "dtype": r["identity"].get("dtype"),
            "label": r.get("label"),
        }
        for r in rows
        if isinstance(r.get("value"), (int, float))
    ]


def _modelfile(name: str, manifest: dict) -> str:
    t = manifest["trajectory"]
    return (
        f"# {manifest['base_model']['id']} pruned by GISP Explorer: trajectory {t['key']}, step {t['step']}, "
        f"parameter sparsity {manifest['param_sparsity']:.4f} ({manifest['gguf']['layout']}, "
        f"{manifest['gguf']['arch']}, {manifest['gguf']['outtype']})\n"
        "# ollama create NAME -f Modelfile   then   ollama run NAME\n"
        f"FROM ./{name}\n"
    )


def _yaml(value) -> str:
    return json.dumps(value, ensure_ascii=False)  # JSON values are YAML flow values


def _model_card(loaded: LoadedModel, manifest: dict, evaluations: list[dict]) -> str:
    g, t = manifest["gguf"], manifest["trajectory"]
    base = EMBEDDED_BASE.get(loaded.model_id, loaded.model_id)
    point = (
        "the trajectory's point" if g["layout"] == "per-layer" else "the trajectory's point (not this uniform model)"
    )
    header = [
        "---",
        f"base_model: {_yaml(base)}",
        "tags:",
        "- gguf",
        "- llama.cpp",
        "- pruned",
        "- structured-pruning",
        "- gisp",
        "gisp:",
        f"  trajectory: {_yaml(t['key'])}",
        f"  step: {t['step']}",
        f"  method: {_yaml(t['method'])}" if t.get("method") else None,
        f"  param_sparsity: {manifest['param_sparsity']:.6f}",
        f"  structural_ratio: {manifest['structural_ratio']:.6f}",
        f"  layout: {g['layout']}",
        f"  arch: {g['arch']}",
        f"  outtype: {g['outtype']}",
        f"  evaluations: {_yaml(evaluations)}",
        "---",
    ]
    lines = [line for line in header if line is not None]
    lines += [
        "",
        f"# {base}, structurally pruned with GISP (step {t['step']}, {manifest['param_sparsity']:.1%} of decoder "
        "linear weights removed)",
        "",
        f"`{g['file']}` is step {t['step']} of GISP Explorer trajectory `{t['key']}`, written for llama.cpp as "
        f"`{g['arch']}` "
        f"({'every layer at its own width' if g['layout'] == 'per-layer' else 'every layer at the same width'}), "
        f"{g['outtype']}. Decoder linear weights: {manifest['linear_params']:,} of {manifest['dense_linear_params']:,}"
        + (
            f" ({g['linear_params']:,} as written: equal GQA groups for llama.cpp add {g['padding_overhead']:.1%})"
            if g["padding_overhead"]
            else ""
        )
        + ".",
        "",
        "```bash",
        f'llama-cli -m {g["file"]} -p "The capital of France is" -n 32',
        "ollama create my-pruned-model -f Modelfile && ollama run my-pruned-model",
        "```",
        "",
    ]
    if evaluations:
        lines += [
            f"Evaluations the explorer remembers for {point}, in PyTorch:",
            "",
            "| task | metric | value | items | dtype |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {e['task']} | {e['metric']} | {e['value']:.4g} | {e['limit'] or 'all'} | {e['dtype']} |"
            for e in evaluations
        ]
        lines.append("")
    lines += [
        "Widths per layer as written (query heads / KV heads / MLP channels):",
        "",
        "| layer | heads | KV heads | channels |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {i} | {layer['gguf']['head_count']} | {layer['gguf']['head_count_kv']} | "
        f"{layer['gguf']['feed_forward_length']} |"
        for i, layer in enumerate(manifest["layers"])
    ]
    lines += [
        "",
        "The manifest (`gisp_manifest.json`) lists the kept original heads and channels of every layer and "
        "the SHA-256 of every file.",
        "",
    ]
    return "\n".join(lines)
