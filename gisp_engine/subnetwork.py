"""Turning a point of a trajectory into a model: check it belongs, then slice (or mask)."""

from __future__ import annotations

import numpy as np
import torch

from .errors import GispError
from .models import LoadedModel
from .structures import LayerKeep
from .surgery import NullAttention, apply_keep, full_layout
from .trajectory import Trajectory


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
        return trajectory._check_step(step)
    if sparsity is None:
        return 0
    return trajectory.step_at_sparsity(float(sparsity))


def apply_step(loaded: LoadedModel, trajectory: Trajectory, step: int, physical: bool = True,
               bias_compensation: bool = False) -> list[LayerKeep] | None:
    """Prune the loaded (dense) model in place to the trajectory's subnetwork at ``step``.

    ``bias_compensation`` (FLAP): every removed ``o_proj``/``down_proj`` input column leaves
    its mean contribution on the calibration data behind as a bias, ``W[:, removed] @ mean``.
    """
    check_compatible(loaded, trajectory)
    keep = trajectory.keep_mask(step)
    biases = _compensation(loaded, trajectory, keep) if bias_compensation else None
    layout = apply_keep(loaded.model, loaded.adapter, trajectory.space, full_layout(trajectory.space), keep, physical)
    if biases is not None:
        _add_biases(loaded, biases)
    return layout if physical else None  # a masked model has no layout of its own


@torch.no_grad()
def _compensation(loaded: LoadedModel, trajectory: Trajectory, keep: np.ndarray) -> list[tuple]:
    if "input_mean_o" not in trajectory.extras:
        raise GispError("bias compensation needs a FLAP trajectory (--method flap), which keeps the calibration "
                        "input means it is computed from")
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
def _add_biases(loaded: LoadedModel, biases: list[tuple]) -> None:
    for layer, (attn_bias, mlp_bias) in zip(loaded.adapter.layers(loaded.model), biases):
        attn = loaded.adapter.attention_module(layer)
        if isinstance(attn, NullAttention):
            attn.bias = attn_bias.to(loaded.dtype)
        else:
            _add_bias(loaded.adapter.attention(layer).o, attn_bias)
        _add_bias(loaded.adapter.mlp(layer).down, mlp_bias)


def _add_bias(linear: torch.nn.Linear, value: torch.Tensor) -> None:
    if linear.bias is None:
        linear.bias = torch.nn.Parameter(torch.zeros(linear.out_features, dtype=linear.weight.dtype,
                                                     device=linear.weight.device), requires_grad=False)
    linear.bias += value.to(linear.bias.dtype)


def keep_fraction_per_layer(trajectory: Trajectory, step: int) -> dict[str, np.ndarray]:
    heads, channels = trajectory.space.as_grid(trajectory.keep_mask(step))
    return {"heads": heads.mean(1), "channels": channels.mean(1)}
