"""Turning a point of a trajectory into a model: check it belongs, then slice (or mask)."""

from __future__ import annotations

import numpy as np
import torch

from ..core.errors import GispError
from ..model.loading import LoadedModel, load_config, recorded_dtype
from ..model.structures import LayerKeep
from ..model.surgery import NullAttention, apply_keep, full_layout
from .trajectory import Trajectory


def recorded_model(trajectory: Trajectory) -> str:
    """The model a trajectory was built from, as its run named it (embedded name, local folder or hub id)."""
    model = trajectory.meta.get("settings", {}).get("model") or trajectory.meta.get("model", {}).get("id")
    if not model:
        raise GispError(f"trajectory {trajectory.key or trajectory.path} does not record its model: give --model")
    return str(model)


def recorded_checkpoint_dtype(model: str) -> str:
    """The dtype a model's checkpoint records in its config (``bfloat16``, ...), or ``auto`` when none is known.

    Export writes this by default, so a bf16 checkpoint is not exported as float32 on CPU.
    """
    _, config, _ = load_config(model)
    return recorded_dtype(config) or "auto"


def check_compatible(loaded: LoadedModel, trajectory: Trajectory) -> None:
    """Refuse a trajectory built for other weights or another geometry than the loaded model's."""
    built_for = trajectory.meta.get("model", {})
    if built_for.get("weights_sha256") != loaded.weights_sha256:
        raise GispError(
            f"trajectory {trajectory.key or trajectory.path} was built for model {built_for.get('id')!r} "
            f"(weights {str(built_for.get('weights_sha256'))[:12]}), not for the loaded {loaded.model_id!r} "
            f"(weights {loaded.weights_sha256[:12]}): load the model it was built for"
        )
    if loaded.geometry != trajectory.geometry:
        raise GispError("trajectory geometry does not match the loaded model")


def resolve_step(trajectory: Trajectory, sparsity: float | None = None, step: int | None = None) -> int:
    """A step from a parameter sparsity (the last step at or below it) or a step number."""
    if sparsity is not None and step is not None:
        raise GispError("give a sparsity or a step, not both")
    if step is not None:
        return trajectory.check_step(step)
    if sparsity is None:
        return 0
    return trajectory.step_at_sparsity(float(sparsity))


def compensates(trajectory: Trajectory, bias_compensation: bool | None = None) -> bool:
    """Whether FLAP's bias compensation applies: as asked, or by default as the method does (FLAP: yes)."""
    if bias_compensation is None:
        return trajectory.meta.get("method") == "flap" and "input_mean_o" in trajectory.extras
    return bias_compensation


def apply_step(
    loaded: LoadedModel, trajectory: Trajectory, step: int, physical: bool = True, bias_compensation: bool | None = None
) -> list[LayerKeep] | None:
    """Prune the loaded (dense) model in place to the trajectory's subnetwork at ``step``.

    ``bias_compensation`` (FLAP; by default on for FLAP trajectories, as published): every
    removed ``o_proj``/``down_proj`` input column leaves its mean contribution on the
    calibration data behind as a bias, ``W[:, removed] @ mean``.
    """
    check_compatible(loaded, trajectory)
    keep = trajectory.keep_mask(step)
    biases = compensation_biases(loaded, trajectory, keep) if compensates(trajectory, bias_compensation) else None
    layout = apply_keep(loaded.model, loaded.adapter, trajectory.space, full_layout(trajectory.space), keep, physical)
    if biases is not None:
        add_biases(loaded, biases)
    return layout if physical else None  # a masked model has no layout of its own


@torch.no_grad()
def compensation_biases(loaded: LoadedModel, trajectory: Trajectory, keep: np.ndarray) -> list[tuple]:
    """Per layer, the (o_proj, down_proj) biases that stand in for the columns ``keep`` removes (dense model)."""
    if "input_mean_o" not in trajectory.extras:
        raise GispError(
            "bias compensation needs a FLAP trajectory (--method flap), which keeps the calibration "
            "input means it is computed from"
        )
    g, space = trajectory.geometry, trajectory.space
    q_keep, _ = space.head_and_kv_keep(keep)
    _, ch_keep = space.as_grid(keep)
    out = []
    for i, layer in enumerate(loaded.adapter.layers(loaded.model)):
        o, down = loaded.adapter.attention(layer).o, loaded.adapter.mlp(layer).down
        cols = np.repeat(~q_keep[i], g.head_dim)
        mean_o = torch.as_tensor(trajectory.extras["input_mean_o"][i] * cols, device=o.weight.device)
        mean_down = torch.as_tensor(trajectory.extras["input_mean_down"][i] * ~ch_keep[i], device=down.weight.device)
        out.append((o.weight.float() @ mean_o.float(), down.weight.float() @ mean_down.float()))
    return out


@torch.no_grad()
def add_biases(loaded: LoadedModel, biases: list[tuple]) -> None:
    """Add ``compensation_biases`` to the (sliced or masked) model; a layer without heads keeps its own."""
    for layer, (attn_bias, mlp_bias) in zip(loaded.adapter.layers(loaded.model), biases):
        attn = loaded.adapter.attention_module(layer)
        if isinstance(attn, NullAttention):  # a parameter, so that an export saves it
            attn.bias = torch.nn.Parameter(attn_bias.to(loaded.dtype), requires_grad=False)
        else:
            _add_bias(loaded.adapter.attention(layer).o, attn_bias)
        _add_bias(loaded.adapter.mlp(layer).down, mlp_bias)


def _add_bias(linear: torch.nn.Linear, value: torch.Tensor) -> None:
    if linear.bias is None:
        linear.bias = torch.nn.Parameter(
            torch.zeros(linear.out_features, dtype=linear.weight.dtype, device=linear.weight.device),
            requires_grad=False,
        )
    linear.bias += value.to(linear.bias.dtype)
