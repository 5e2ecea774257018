"""Exporting a point of a trajectory as a model folder that loads anywhere, and loading it back.

An export is a folder with safetensors weights, ``config.json``, the tokenizer files and a
manifest (``gisp_manifest.json``). Two kinds:

* **per-layer** (default): exactly the trajectory's subnetwork; layers keep different widths.
  The folder carries its own configuration and modeling code (``configuration_gisp.py``,
  ``modeling_gisp.py``, rendered from ``gisp_engine/export/remote_code``), registered through
  ``auto_map``, so ``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)``
  loads it with nothing of this project installed. Where kept query heads do not form equal
  groups over their KV heads, the KV cache holds only the kept KV heads and each query head
  is given its own KV head after the cache update (compact cache).
* **uniform** (``uniform=True``): every layer cut to the same width, so the stock modeling
  code loads it with no remote code. This is *not* the trajectory's subnetwork; see
  ``uniform_keep_mask`` for the rule, and the manifest for its own sparsity.

The manifest records the kept original indices of every layer (query heads, KV heads,
channels), the parameter count, the parameter sparsity, the trajectory key and step, the
SHA-256 of the base model's weights, and the SHA-256 of every file written. ``load_pruned``
refuses a folder whose files differ from the manifest, that holds files the export did not
write, whose modeling code is not the project's own rendering, or whose loaded parameter
count differs from the manifest's.

Exporting slices the loaded model in place (one weight at a time, never two full copies):
afterwards ``loaded.model`` *is* the subnetwork. Load the model again for the dense one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.errors import GispError
from ..core.fsutil import atomic_write_bytes, staging_dir
from ..core.progress import ProgressCallback, null_progress
from ..model.loading import LoadedModel
from ..model.structures import LayerKeep, StructureSpace
from ..model.surgery import full_layout, kv_expand_index, linear_weight_count, slice_
from ..pruning.methods import ALIGN_RULE, check_align
from ..pruning.subnetwork import add_biases, compensates, compensation_biases, resolve_step
from ..pruning.trajectory import Trajectory
from . import remote_code

# the public names of exports live here too: gisp_engine.export.hf.load_pruned, MANIFEST, verify_export, PrunedModel
from .folder import (  # noqa: F401
    MANIFEST,
    PER_LAYER,
    UNIFORM,
    PrunedModel,
    hash_files,
    manifest_head,
    manifest_json,
    param_count,
    start_export,
    verify_export,
    write_config_and_code,
)
from .load import load_pruned  # noqa: F401
from .widths import (
    UNIFORM_RULE,
    UniformWidths,
    aligned_keep_mask,
    config_accepts,
    uniform_keep_mask,
    weight_norms,
)


@dataclass
class ExportResult:
    folder: Path
    manifest: dict

    @property
    def step(self) -> int:
        return int(self.manifest["trajectory"]["step"])

    @property
    def param_sparsity(self) -> float:
        return float(self.manifest["param_sparsity"])

    @property
    def param_count(self) -> int:
        return int(self.manifest["param_count"])

    def summary(self) -> dict:
        m = self.manifest
        return {
            "path": str(self.folder),
            "kind": m["kind"],
            "step": self.step,
            "param_sparsity": self.param_sparsity,
            "structural_ratio": m["structural_ratio"],
            "trajectory_param_sparsity": m["trajectory"]["param_sparsity"],
            "param_count": self.param_count,
            "linear_params": m["linear_params"],
            "uniform": m["uniform"],
            "align": (m.get("align") or {}).get("multiple"),
            "loads_with": m["loads_with"],
        }


# ---- FLAP's bias compensation in a stock (uniform) folder -------------------------------------
_STOCK_BIAS_SWITCHES = ("attention_bias", "mlp_bias")


def _check_stock_biases(loaded: LoadedModel) -> None:
    """Refuse a family whose stock code cannot hold an o_proj and a down_proj bias."""
    config = loaded.model.config
    if not all(hasattr(config, name) for name in _STOCK_BIAS_SWITCHES):
        raise GispError(
            f"the stock {config.model_type} code has no switch for an o_proj and down_proj bias, which FLAP's bias "
            "compensation needs: export per-layer (without --uniform), or without the compensation "
            "(--no-bias-compensation)"
        )


@torch.no_grad()
def _zero_stock_biases(loaded: LoadedModel) -> None:
    """``attention_bias``/``mlp_bias`` give q, k, v, gate and up a bias too: zeros, so the outputs do not change."""
    for layer in loaded.adapter.layers(loaded.model):
        lin, mlp = loaded.adapter.attention(layer), loaded.adapter.mlp(layer)
        for linear in (lin.q, lin.k, lin.v, lin.o, mlp.gate, mlp.up, mlp.down):
            if linear.bias is None:
                linear.bias = torch.nn.Parameter(
                    torch.zeros(linear.out_features, dtype=linear.weight.dtype, device=linear.weight.device),
                    requires_grad=False,
                )


# ---- writing --------------------------------------------------------------------------------
def _layer_spec(space: StructureSpace, keep: LayerKeep) -> dict:
    return {
        "num_heads": len(keep.heads),
        "num_kv_heads": len(keep.kv_heads),
        "intermediate_size": len(keep.channels),
        "kv_map": kv_expand_index(space, keep) if keep.heads else None,
    }


def _config_dict(
    loaded: LoadedModel,
    space: StructureSpace,
    layout: list[LayerKeep],
    family: remote_code.BaseFamily,
    widths: UniformWidths | None,
) -> dict:
    config = loaded.model.config.to_dict()
    config.pop("_name_or_path", None)
    config.pop("auto_map", None)
    config["dtype"] = str(loaded.dtype).removeprefix("torch.")
    if widths is not None:  # stock config at the uniform widths; head_dim stays the base one
        config.update(
            num_attention_heads=widths.heads,
            num_key_value_heads=widths.kv_heads,
            intermediate_size=widths.channels,
            head_dim=space.geometry.head_dim,
        )
        return config
    config.update(
        model_type=family.pruned_model_type,
        architectures=[remote_code.MODEL_CLASS],
        auto_map=remote_code.auto_map(),
        head_dim=space.geometry.head_dim,
        gisp_base_model_type=family.model_type,
        gisp_template_version=remote_code.TEMPLATE_VERSION,
        gisp_layers=[_layer_spec(space, lk) for lk in layout],
    )
    return config


def export_subnetwork(
    loaded: LoadedModel,
    trajectory: Trajectory,
    step: int,
    out_dir: Path | str,
    uniform: bool = False,
    progress: ProgressCallback = null_progress,
    bias_compensation: bool | None = None,
    align: int | None = None,
) -> ExportResult:
    """Write the subnetwork at ``step`` (or its uniform version) into ``out_dir``; slices ``loaded`` in place.

    ``bias_compensation``: FLAP's biases for the removed columns (default: on for FLAP trajectories).
    ``align``: every layer's MLP width rounded to a multiple of it, in the trajectory's order (``ALIGN_RULE``).
    """
    if align is not None:  # before anything is written
        check_align(align, trajectory.geometry.intermediate_size)
    start = start_export(loaded, trajectory, out_dir, progress, slices_in_place=True)
    out, family, report = start.out, start.family, start.report
    step = resolve_step(trajectory, step=step)
    space = trajectory.space
    report(0, "choosing structures")
    widths = None
    if uniform:
        unscored = sorted({int(space.layer[i]) for i in np.flatnonzero(np.isnan(trajectory.score))})
        norms = weight_norms(loaded, space, unscored) if unscored else None
        keep, widths = uniform_keep_mask(trajectory, step, config_accepts(loaded.model.config), norms, align)
    else:
        keep = trajectory.keep_mask(step) if align is None else aligned_keep_mask(trajectory, step, align)
    compensate = compensates(trajectory, bias_compensation)
    if compensate and uniform:
        _check_stock_biases(loaded)
    biases = compensation_biases(loaded, trajectory, keep) if compensate else None  # from the dense weights

    report(1, "slicing")
    layout = slice_(loaded.model, loaded.adapter, space, full_layout(space), keep)
    if biases is not None:
        add_biases(loaded, biases)
        if uniform:
            _zero_stock_biases(loaded)
    linear = int(space.linear_params_per_layer(keep).sum())
    if linear_weight_count(loaded.model, loaded.adapter) != linear:  # the slicer and the accounting must agree
        raise GispError("internal error: the sliced model's size does not match its keep-mask")
    point = trajectory.steps[step]
    config = _config_dict(loaded, space, layout, family, widths)
    if compensate:  # uniform: the stock switches; per-layer: the remote code's own
        config.update({"attention_bias": True, "mlp_bias": True} if uniform else {"gisp_output_bias": True})

    with staging_dir(out) as tmp:
        report(2, "writing weights")
        # shards of 2 GB: writing holds at most one shard's bytes beside the (already smaller) model
        loaded.model.save_pretrained(tmp, max_shard_size="2GB")
        report(3, "writing config, tokenizer and code")
        code = {} if uniform else remote_code.render(family)
        write_config_and_code(tmp, loaded, config, code)
        report(4, "hashing")
        files = hash_files(tmp)
        loads_with = (
            "AutoModelForCausalLM.from_pretrained(DIR) (stock code) or gisp_engine.load_pruned(DIR)"
            if uniform
            else "AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True) (and AutoTokenizer likewise) "
            "or gisp_engine.load_pruned(DIR)"
        )
        manifest = manifest_head(UNIFORM if uniform else PER_LAYER, loads_with, loaded, trajectory)
        manifest["trajectory"].update(
            step=step, param_sparsity=point.param_sparsity, structural_ratio=point.structural_ratio
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
                "remote_code": None
                if uniform
                else {
                    "template_version": remote_code.TEMPLATE_VERSION,
                    "base": family.to_dict(),
                    "files": sorted(code),
                    "kv_cache": "compact: only kept KV heads are cached; "
                    "uneven groups are expanded after the cache update",
                },
                "layers": [lk.to_dict() for lk in layout],
                "files": files,
            }
        )
        atomic_write_bytes(tmp / MANIFEST, manifest_json(manifest).encode("utf-8"))
    report(5, "done")
    return ExportResult(out, manifest)
