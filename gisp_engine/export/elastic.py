"""The elastic export: every step of a trajectory in one folder, each step a prefix of every layer.

A trajectory is a chain of nested subnetworks. Within each layer the export stores heads and
channels in *survival order*: never removed first, then by removal step, latest first. The
structures kept at step ``t`` are then the first ones of every tensor, so one folder about the
dense model's size holds every step, and loading a step reads only the rows it keeps.

* Query policy: a KV head lives while any of its query heads does, so its removal step is the
  latest of theirs and KV heads sort into prefixes too. ``q_to_kv`` (per layer, for each stored
  query head the stored position of its KV head) goes into ``config.json``; query heads that
  survive equally long are ordered by their KV head, so that full groups stay contiguous.
* KV-group policy: a KV head and its query heads go together, in their original order.
* ``o_proj`` and ``down_proj`` weights are stored transposed (``<name>_t``), so that a step's
  columns of them are rows too: every read is one contiguous range of bytes.

The folder carries the per-layer export's code plus ``modeling_gisp_elastic.py``, whose
``from_pretrained`` builds the per-layer model at a step's widths and fills it with
``safe_open(...).get_slice``; ``load_pruned(DIR, step=...)`` / ``load_pruned(DIR, sparsity=...)``
verifies the folder first. The manifest lists every step's widths, parameter count and sparsity,
the stored order of every layer (original indices) and the SHA-256 of every file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.errors import GispError
from ..core.fsutil import atomic_write_bytes, atomic_write_json, staging_dir
from ..core.progress import ProgressCallback, null_progress
from ..model.loading import LoadedModel, resolve_device, resolve_dtype
from ..model.structures import StructureSpace
from ..model.surgery import head_rows, slice_linear
from ..pruning.trajectory import SPARSITY_EPS, Trajectory
from . import remote_code
from .folder import (
    ELASTIC,
    MANIFEST,
    PrunedModel,
    adapter_for_manifest,
    hash_files,
    manifest_head,
    manifest_json,
    param_count,
    start_export,
    write_config_and_code,
)

TRANSPOSED = "_t"  # suffix of a stored input-major tensor (must match the remote code's)
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
SHARD_BYTES = 2 * 2**30  # as the per-step export: writing holds at most one shard of copies beside the model
ELASTIC_LOADS_WITH = (
    "AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True, gisp_step=T) (or gisp_sparsity=S; "
    "default the last step) or gisp_engine.load_pruned(DIR, step=T) / load_pruned(DIR, sparsity=S)"
)


# ---- results -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerOrder:
    """One layer's stored order: original indices, longest-surviving first."""

    heads: tuple[int, ...]  # query heads
    kv_heads: tuple[int, ...]
    channels: tuple[int, ...]
    q_to_kv: tuple[int, ...]  # per stored query head, the stored position of its KV head

    def to_dict(self) -> dict:
        return {"heads": list(self.heads), "kv_heads": list(self.kv_heads), "channels": list(self.channels)}


@dataclass
class ElasticExportResult:
    folder: Path
    manifest: dict

    @property
    def steps(self) -> list[dict]:
        return self.manifest["steps"]

    def summary(self) -> dict:
        m = self.manifest
        return {
            "path": str(self.folder),
            "kind": m["kind"],
            "steps": len(m["steps"]),
            "last_step": m["steps"][-1]["step"],
            "max_param_sparsity": m["steps"][-1]["param_sparsity"],
            "param_count": m["steps"][0]["param_count"],  # what the folder stores: the dense model's
            "weights_bytes": sum(
                (self.folder / name).stat().st_size for name in m["files"] if name.endswith(".safetensors")
            ),
            "loads_with": m["loads_with"],
        }


@dataclass
class ElasticModel(PrunedModel):
    """One step of an elastic export, loaded (``manifest`` is the whole folder's)."""

    step: int = 0

    @property
    def param_sparsity(self) -> float:
        return float(self.manifest["steps"][self.step]["param_sparsity"])


# ---- the order ------------------------------------------------------------------------------
def _first(*keys: np.ndarray) -> np.ndarray:
    """Indices sorted by the keys, the first key primary (ascending)."""
    return np.lexsort(keys[::-1])


def survival_order(trajectory: Trajectory) -> list[LayerOrder]:
    """Every layer's stored order: never removed first, then later removal first; ties in original order."""
    g, space = trajectory.geometry, trajectory.space
    survival = np.where(trajectory.removal_step == -1, trajectory.num_steps + 1, trajectory.removal_step)
    out = []
    for layer in range(g.num_layers):
        heads, channels = survival[space.head_slice(layer)], survival[space.channel_slice(layer)]
        if space.gqa == "query":
            kv_survival = heads.reshape(g.num_kv_heads, g.group_size).max(1)
        else:
            kv_survival = heads
        kv_order = _first(-kv_survival, np.arange(g.num_kv_heads))
        kv_position = np.argsort(kv_order)
        q = np.arange(g.num_heads)
        q_survival = heads if space.gqa == "query" else np.repeat(heads, g.group_size)
        q_order = _first(-q_survival, kv_position[q // g.group_size], q)
        out.append(
            LayerOrder(
                heads=tuple(q_order.tolist()),
                kv_heads=tuple(kv_order.tolist()),
                channels=tuple(_first(-channels, np.arange(g.intermediate_size)).tolist()),
                q_to_kv=tuple(kv_position[q_order // g.group_size].tolist()),
            )
        )
    return out


def step_widths(trajectory: Trajectory, order: list[LayerOrder], step: int) -> list[list[int]]:
    """Per layer ``[query heads, KV heads, channels]`` kept at ``step``; checks that they are prefixes of ``order``."""
    widths = []
    for layer, (kept, stored) in enumerate(zip(trajectory.space.layer_keep(trajectory.keep_mask(step)), order)):
        n = [len(kept.heads), len(kept.kv_heads), len(kept.channels)]
        prefixes = (
            set(stored.heads[: n[0]]) == set(kept.heads),
            set(stored.kv_heads[: n[1]]) == set(kept.kv_heads),
            set(stored.channels[: n[2]]) == set(kept.channels),
        )
        if not all(prefixes):  # removal is permanent, so this cannot happen for a valid trajectory
            raise GispError(f"internal error: step {step}'s structures in layer {layer} are not a prefix of the order")
        widths.append(n)
    return widths


# ---- parameters at a step -----------------------------------------------------------------
FULL, QUERY, KV, CHANNEL, ATTENTION = "full", "query", "kv", "channel", "attention"


def _param_roles(loaded: LoadedModel) -> tuple[dict[int, tuple[int, str]], set[str]]:
    """id(parameter) -> (layer, what its size follows); and the names of the weights stored transposed."""
    roles, transposed = {}, set()
    module_names = {id(m): name for name, m in loaded.model.named_modules()}
    adapter = loaded.adapter
    for i, layer in enumerate(adapter.layers(loaded.model)):
        lin, mlp = adapter.attention(layer), adapter.mlp(layer)
        for p in adapter.attention_module(layer).parameters():
            roles[id(p)] = (i, ATTENTION)  # norms and biases that go with the heads (none left: none kept)
        for linear, role in ((lin.q, QUERY), (lin.k, KV), (lin.v, KV)):
            roles.update({id(p): (i, role) for p in linear.parameters()})
        roles[id(lin.o.weight)] = (i, QUERY)
        for linear in (mlp.gate, mlp.up):
            roles.update({id(p): (i, CHANNEL) for p in linear.parameters()})
        roles[id(mlp.down.weight)] = (i, CHANNEL)
        transposed |= {module_names[id(lin.o)] + ".weight", module_names[id(mlp.down)] + ".weight"}
    return roles, transposed


def _count_at(sizes: list[tuple[int, int, str]], widths: list[list[int]], dense: list[int]) -> int:
    """Parameters of the step with ``widths``: every tensor shrinks in proportion to what it follows."""
    total = 0
    for numel, layer, role in sizes:
        if role == FULL:
            total += numel
            continue
        heads, kv_heads, channels = widths[layer]
        if role == ATTENTION:
            total += numel if heads else 0
        else:
            kept, full = {QUERY: (heads, dense[0]), KV: (kv_heads, dense[1]), CHANNEL: (channels, dense[2])}[role]
            total += numel * kept // full
    return total


# ---- export ---------------------------------------------------------------------------------
@torch.no_grad()
def _permute(loaded: LoadedModel, space: StructureSpace, order: list[LayerOrder], inverse: bool = False) -> None:
    """Put every layer's heads and channels into ``order`` (or back), one weight at a time."""
    head_dim = space.geometry.head_dim
    for layer, stored in zip(loaded.adapter.layers(loaded.model), order):
        lin, mlp = loaded.adapter.attention(layer), loaded.adapter.mlp(layer)
        q, kv, ch = (np.asarray(x) for x in (stored.heads, stored.kv_heads, stored.channels))
        if inverse:
            q, kv, ch = np.argsort(q), np.argsort(kv), np.argsort(ch)
        q_rows, kv_rows = head_rows(q.tolist(), head_dim), head_rows(kv.tolist(), head_dim)
        channels = torch.as_tensor(ch, dtype=torch.long)
        for linear, index, dim in (
            (lin.q, q_rows, 0),
            (lin.k, kv_rows, 0),
            (lin.v, kv_rows, 0),
            (lin.o, q_rows, 1),
            (mlp.gate, channels, 0),
            (mlp.up, channels, 0),
            (mlp.down, channels, 1),
        ):
            slice_linear(linear, index, dim)  # a permutation: same width, new order


def _stored_tensors(model: nn.Module, transposed: set[str]) -> list[tuple[str, Callable[[], torch.Tensor], int]]:
    """(stored name, how to make it, bytes) for every parameter (tied ones once) and persistent buffer."""
    out = []
    state = model.state_dict(keep_vars=True)
    tensors = list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if n in state]
    for name, tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if name in transposed:
            out.append((name + TRANSPOSED, lambda t=tensor: t.detach().t().contiguous(), nbytes))
        else:
            out.append((name, lambda t=tensor: t.detach().contiguous(), nbytes))
    return out


def _shards(tensors: list, limit: int) -> Iterator[list]:
    shard, size = [], 0
    for item in tensors:
        if shard and size + item[2] > limit:
            yield shard
            shard, size = [], 0
        shard.append(item)
        size += item[2]
    if shard:
        yield shard


def _write_weights(folder: Path, tensors: list) -> None:
    from safetensors.torch import save_file

    shards = list(_shards(tensors, SHARD_BYTES))
    names = (
        [WEIGHTS_NAME]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file({key: make() for key, make, _ in shard}, str(folder / name), metadata={"format": "pt"})
        weight_map.update({key: name for key, _, _ in shard})
    if len(shards) > 1:
        atomic_write_json(
            folder / WEIGHTS_INDEX_NAME,
            {"metadata": {"total_size": sum(t[2] for t in tensors)}, "weight_map": weight_map},
        )


def _elastic_config(
    loaded: LoadedModel,
    space: StructureSpace,
    family: remote_code.BaseFamily,
    order: list[LayerOrder],
    steps: list[dict],
) -> dict:
    config = loaded.model.config.to_dict()
    for key in ("_name_or_path", "auto_map", "gisp_layers"):
        config.pop(key, None)
    config.update(
        dtype=str(loaded.dtype).removeprefix("torch."),
        model_type=family.pruned_model_type,
        architectures=[remote_code.ELASTIC_CLASS],
        auto_map=remote_code.auto_map(elastic=True),
        head_dim=space.geometry.head_dim,
        gisp_base_model_type=family.model_type,
        gisp_template_version=remote_code.ELASTIC_TEMPLATE_VERSION,
        gisp_step=None,  # set by from_pretrained(..., gisp_step=T); None: the last step
        gisp_sparsity=None,
        gisp_elastic={
            "steps": [{"step": s["step"], "param_sparsity": s["param_sparsity"], "widths": s["widths"]} for s in steps],
            "q_to_kv": [list(o.q_to_kv) for o in order],
        },
    )
    return config


def export_elastic(
    loaded: LoadedModel,
    trajectory: Trajectory,
    out_dir: Path | str,
    bias_compensation: bool | None = None,
    progress: ProgressCallback = null_progress,
) -> ElasticExportResult:
    """Write every step of ``trajectory`` into one folder (see the module docstring); ``loaded`` is left as it was."""
    from ..pruning.subnetwork import compensates

    start = start_export(loaded, trajectory, out_dir, progress, slices_in_place=False)
    out, family, report = start.out, start.family, start.report
    if compensates(trajectory, bias_compensation):
        raise GispError(
            "an elastic export cannot hold FLAP's bias compensation (its biases differ at every step): "
            "export single steps, or leave it out (--no-bias-compensation, bias_compensation=False)"
        )
    space, g = trajectory.space, trajectory.geometry
    report(0, "ordering structures")
    order = survival_order(trajectory)
    roles, transposed = _param_roles(loaded)
    sizes = [(p.numel(), *roles.get(id(p), (0, FULL))) for p in loaded.model.parameters()]
    dense = [g.num_heads, g.num_kv_heads, g.intermediate_size]
    steps = []
    for rec in trajectory.steps:
        keep = trajectory.keep_mask(rec.step)
        widths = step_widths(trajectory, order, rec.step)
        steps.append(
            {
                "step": rec.step,
                "param_sparsity": space.param_sparsity(keep),
                "structural_ratio": float(1.0 - keep.mean()),
                "linear_params": int(space.linear_params_per_layer(keep).sum()),
                "param_count": _count_at(sizes, widths, dense),
                "widths": widths,
            }
        )
    config = _elastic_config(loaded, space, family, order, steps)

    with staging_dir(out) as tmp:
        report(1, "ordering weights")
        _permute(loaded, space, order)
        try:
            report(2, "writing weights")
            _write_weights(tmp, _stored_tensors(loaded.model, transposed))
        finally:
            _permute(loaded, space, order, inverse=True)
        report(3, "writing config, tokenizer and code")
        if getattr(loaded.model, "generation_config", None) is not None:
            loaded.model.generation_config.save_pretrained(tmp)
        code = remote_code.render(family, elastic=True)
        write_config_and_code(tmp, loaded, config, code)
        report(4, "hashing")
        files = hash_files(tmp)
        manifest = manifest_head(ELASTIC, ELASTIC_LOADS_WITH, loaded, trajectory)
        manifest["trajectory"]["num_steps"] = trajectory.num_steps
        manifest.update(
            {
                "dense_linear_params": space.total_linear_params(),
                "dtype": str(loaded.dtype).removeprefix("torch."),
                "steps": steps,
                "remote_code": {
                    "template_version": remote_code.ELASTIC_TEMPLATE_VERSION,
                    "base": family.to_dict(),
                    "files": sorted(code),
                    "kv_cache": "compact: only kept KV heads are cached; "
                    "uneven groups are expanded after the cache update",
                    "storage": "survival order per layer; o_proj and down_proj weights stored transposed as "
                    f"<name>{TRANSPOSED}",
                },
                "order": [o.to_dict() for o in order],
                "files": files,
            }
        )
        atomic_write_bytes(tmp / MANIFEST, manifest_json(manifest).encode("utf-8"))
    report(5, "done")
    return ElasticExportResult(out, manifest)


# ---- loading --------------------------------------------------------------------------------
def resolve_elastic_step(manifest: dict, step: int | None = None, sparsity: float | None = None) -> int:
    """A step of an elastic export: given, the last at or below a parameter sparsity, or (neither) the last."""
    steps = manifest["steps"]
    last = len(steps) - 1
    if step is not None and sparsity is not None:
        raise GispError("give a sparsity or a step, not both")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step <= last:
            raise GispError(f"step {step} is outside this export's steps 0..{last}")
        return int(step)
    if sparsity is None:
        return last
    top = steps[-1]["param_sparsity"]
    if not 0.0 <= sparsity <= top + SPARSITY_EPS:
        raise GispError(
            f"sparsity {sparsity:g} is outside 0 .. {top:.4f}, the largest parameter sparsity this export holds"
        )
    return max(s["step"] for s in steps if s["param_sparsity"] <= sparsity + SPARSITY_EPS)


def load_elastic(
    folder: Path,
    manifest: dict,
    device: str = "auto",
    dtype: str = "auto",
    step: int | None = None,
    sparsity: float | None = None,
) -> ElasticModel:
    """Load one step of a verified elastic export (``load.load_pruned`` verifies, then calls this)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    step = resolve_elastic_step(manifest, step, sparsity)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch_dtype, trust_remote_code=True, gisp_step=step, device_map=str(dev)
    )
    record = manifest["steps"][step]
    count = param_count(model)
    if count != record["param_count"]:
        raise GispError(
            f"{folder}: step {step} loaded with {count} parameters, the manifest says {record['param_count']}"
        )
    adapter = adapter_for_manifest(manifest, model.config)
    head_dim = int(manifest["base_model"]["geometry"]["head_dim"])
    for i, (layer, expected) in enumerate(zip(adapter.layers(model), record["widths"], strict=True)):
        found = [0, 0, adapter.mlp(layer).gate.out_features]
        if expected[0]:
            lin = adapter.attention(layer)
            found[:2] = [lin.q.out_features // head_dim, lin.k.out_features // head_dim]
        if found != list(expected):
            raise GispError(f"{folder}: step {step}, layer {i} has widths {found}, the manifest says {expected}")
    tokenizer = AutoTokenizer.from_pretrained(folder, config=model.config)
    return ElasticModel(model, tokenizer, adapter, manifest, folder, dev, torch_dtype, step=step)


def folder_bytes(folder: Path | str) -> int:
    """Bytes of the weight files of an export folder (what the size targets compare)."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.name.endswith(".safetensors"))
