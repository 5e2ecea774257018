"""Data-parallel scoring with ``torch.distributed``: one process per device, launched by ``torchrun``.

Every rank holds the whole working model and scores its share of the calibration micro-batches
(``shard``: every ``world_size``-th micro-batch, starting at its rank). The scored weights'
gradient sums are all-reduced (sum, float32) inside the scoring hooks, so ``|W ⊙ ḡ|`` is still
taken of the global mean gradient; rank 0's scores are then broadcast, so every rank removes
the same structures. Only rank 0 takes the cache lock and writes trajectories, checkpoints and
cache entries. The number of processes is not part of the cache key: it does not change the result.

Without an initialized process group everything here is a no-op for one process.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ..core.errors import GispError

T = TypeVar("T")

#: Longest wait of one collective. Rank 0 may wait for another run's cache lock while the others
#: wait in a broadcast, so this is long; a rank that dies breaks its peers' connections at once anyway.
TIMEOUT_ENV = "GISP_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 4 * 3600


@dataclass(frozen=True)
class DistContext:
    """This process's place in the group (rank 0 of 1 without torch.distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context() -> DistContext:
    """The current process group's rank and size, or a single process when there is none."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size())
    return DistContext()


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher using its environment variables) started this process."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def check_device_map(device_map: str | None, ctx: DistContext | None = None) -> None:
    """``--device-map auto`` spreads one model over every visible GPU: ranks would share (and overfill) them."""
    ctx = ctx or context()
    if ctx.active and device_map:
        raise GispError(
            f"--device-map {device_map} cannot be combined with distributed scoring ({ctx.world_size} processes): "
            "every rank holds the whole model on its own device. Run one process with --device-map auto, "
            "or several processes without it"
        )


def backend_for(device: str) -> str:
    """gloo for CPU tensors, NCCL for CUDA ones (gloo still carries the small CPU objects)."""
    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "cpu:gloo,cuda:nccl" if wants_cuda and dist.is_nccl_available() else "gloo"


@contextlib.contextmanager
def session(device: str = "auto", required: bool = False) -> Iterator[DistContext]:
    """Join torchrun's process group for the duration of a command (a single process when not launched).

    ``required`` (``--distributed``) refuses to run outside torchrun instead of silently running alone.
    On CUDA each rank takes the GPU ``LOCAL_RANK``, so ``--device cuda``/``auto`` is that rank's own GPU.
    """
    if dist.is_available() and dist.is_initialized():
        yield context()  # the caller set the group up (tests, notebooks)
        return
    if not launched_by_torchrun():
        if required:
            raise GispError(
                "--distributed needs a launcher: run `torchrun --nproc_per_node N -m gisp_engine prune ...` "
                "(RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT are not set)"
            )
        yield DistContext()
        return
    if not dist.is_available():
        raise GispError("this PyTorch build has no torch.distributed: run one process, without torchrun")
    backend = backend_for(device)
    if "nccl" in backend:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = _dt.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
    dist.init_process_group(backend=backend, timeout=timeout)
    try:
        yield context()
    finally:
        dist.destroy_process_group()


def shard(items: Sequence[T], ctx: DistContext | None = None) -> list[T]:
    """This rank's micro-batches: every ``world_size``-th, from its rank (counts differ by at most one)."""
    ctx = ctx or context()
    return list(items[ctx.rank :: ctx.world_size]) if ctx.active else list(items)


def _carried(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on a device the group's backend can carry (a pure NCCL group carries no CPU tensor)."""
    if tensor.device.type == "cpu" and dist.get_backend() == "nccl":
        return tensor.to(torch.device("cuda", torch.cuda.current_device()))
    return tensor


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place (nothing to do for one process)."""
    if context().active:
        carried = _carried(tensor)
        dist.all_reduce(carried, op=dist.ReduceOp.SUM)
        if carried is not tensor:
            tensor.copy_(carried)
    return tensor


def broadcast_tensor_(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s values in ``tensor`` on every rank, in place."""
    if context().active:
        carried = _carried(tensor)
        dist.broadcast(carried, src=src)
        if carried is not tensor:
            tensor.copy_(carried)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; for small control data such as a cache hit)."""
    if not context().active:
        return obj
    box = [obj]
    device = None if dist.get_backend() == "nccl" else torch.device("cpu")  # None: the current GPU
    dist.broadcast_object_list(box, src=src, device=device)
    return box[0]


def barrier() -> None:
    if context().active:
        dist.barrier()
