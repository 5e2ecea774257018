"""Turning a point of a trajectory into a model: check it belongs, then slice (or mask)."""

from __future__ import annotations

import numpy as np

from .errors import GispError
from .models import LoadedModel
from .structures import LayerKeep
from .surgery import full_layout, mask_, slice_
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


def apply_step(loaded: LoadedModel, trajectory: Trajectory, step: int, physical: bool = True) -> list[LayerKeep] | None:
    """Prune the loaded (dense) model in place to the trajectory's subnetwork at ``step``."""
    check_compatible(loaded, trajectory)
    keep = trajectory.keep_mask(step)
    if physical:
        return slice_(loaded.model, loaded.adapter, trajectory.space, full_layout(trajectory.space), keep)
    mask_(loaded.model, loaded.adapter, trajectory.space, keep)
    return None


def keep_fraction_per_layer(trajectory: Trajectory, step: int) -> dict[str, np.ndarray]:
    heads, channels = trajectory.space.as_grid(trajectory.keep_mask(step))
    return {"heads": heads.mean(1), "channels": channels.mean(1)}
