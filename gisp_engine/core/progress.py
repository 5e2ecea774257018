"""Progress reporting without a UI dependency: the engine emits events, callers render them.

The CLI turns events into tqdm bars (:class:`TqdmProgress`, here), the app into ``st.progress``,
tests into lists.
"""

from __future__ import annotations

import sys
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


# ---- renderers -------------------------------------------------------------------------------
class TqdmProgress:
    """Renders engine progress events as tqdm bars on stderr.

    Pruning shows one bar over the steps (with loss and sparsity beside it, and tqdm's
    estimate of the time left) and, when a step has several micro-batches, a bar inside it.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bars: dict[str, object] = {}

    def _bar(self, key: str, total: int, desc: str, position: int, leave: bool):
        from tqdm import tqdm

        bar = self.bars.get(key)
        if bar is None or bar.total != total or bar.desc != desc:
            if bar is not None:
                bar.close()
            bar = tqdm(total=total, desc=desc, position=position, leave=leave, file=sys.stderr, dynamic_ncols=True)
            self.bars[key] = bar
        return bar

    def __call__(self, event: ProgressEvent) -> None:
        if not self.enabled:
            return
        if event.phase in ("prepare", "final"):
            if event.message and event.done == 0:
                print(f"gisp: {event.message}", file=sys.stderr)
            return
        if event.phase == "step":
            bar = self._bar("step", event.total, "pruning steps", 0, True)
            if event.info:
                bar.set_postfix(event.info, refresh=False)
            bar.n = event.done
            bar.refresh()
            return
        if event.phase == "sweep":
            bar = self._bar("sweep", event.total, "sweep points", 0, True)
            bar.set_postfix_str(event.message, refresh=False)
            bar.n = event.done
            bar.refresh()
            return
        if event.phase == "score" and event.total <= 1:
            return  # one micro-batch: the step bar says it all
        inner = "score" if event.phase == "score" else "eval"
        desc = f"step {event.step} batches" if event.phase == "score" else event.message or event.phase
        nested = event.phase == "score" or "sweep" in self.bars  # below the step or sweep bar
        bar = self._bar(inner, event.total, desc, 1 if nested else 0, not nested)
        bar.n = event.done
        bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
