"""Progress reporting without a UI dependency: the engine emits events, callers render them.

The CLI turns events into tqdm bars, the app into ``st.progress``, tests into lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    phase: str  # "prepare", "step" (one per pruning step), "score" (micro-batches), "final", "eval", ...
    done: int  # units of work finished in this phase (batches, windows, ...)
    total: int
    step: int | None = None  # pruning step this event belongs to (1-based), if any
    total_steps: int | None = None
    message: str = ""
    info: dict | None = None  # figures worth showing beside the bar (loss, sparsity, ...)


ProgressCallback = Callable[[ProgressEvent], None]


def null_progress(_: ProgressEvent) -> None:
    pass
