"""Helpers for tests that drive the explorer's pages through Streamlit's ``AppTest``: open a page as a user would,
read the figures it sent (decoded) and its messages, fill the Run form, wait for background work."""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")


def copy_into_cache(trajectories: dict[str, Path], cache: Path) -> dict[str, str]:
    """Trajectory folders copied into ``cache`` (so the app lists them): name -> the copy's path."""
    out = {}
    for name, folder in trajectories.items():
        dest = cache / "trajectories" / folder.name
        shutil.copytree(folder, dest)
        out[name] = str(dest)
    return out


def open_page(page: str | None, select: str | None = None, timeout: float = 120):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=timeout)
    if select:
        at.session_state["selected_trajectory"] = select
    at.run()
    assert not at.exception, at.exception
    if page:
        at.switch_page(page).run()
        assert not at.exception, at.exception
    return at


def decode(value) -> np.ndarray:
    """A plotly data array as sent to the browser (plain list or base64 typed array)."""
    if isinstance(value, dict) and "bdata" in value:
        arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        return arr.reshape([int(s) for s in str(shape).split(",")]) if shape else arr
    return np.asarray(value)


def chart(at, title_start: str) -> dict:
    """A figure the page drew (st.plotly_chart, or explorer_ui.plotly_chart's component), by the start of its title."""
    figures = [json.loads(el.proto.spec) for el in at.get("plotly_chart")]
    components = [json.loads(el.proto.json_args) for el in at.get("component_instance")]
    figures += [json.loads(args["spec"]) for args in components if "spec" in args]
    for fig in figures:
        title = fig["layout"].get("title", {}).get("text", "")
        if title.startswith(title_start):
            return fig
    raise AssertionError(f"no figure titled {title_start!r}; have {[f['layout'].get('title') for f in figures]}")


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def no_errors(at) -> None:
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def wait_for(predicate, timeout: float = 240.0, every: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")


# ---- run --------------------------------------------------------------------------------------
def fill_run_form(at, model: str, max_sparsity: float, steps: int = 2) -> None:
    at.text_input[0].set_value(model)
    numbers = {n.label: n for n in at.number_input}
    numbers["Calibration sequences"].set_value(4)
    numbers["Tokens per sequence"].set_value(32)
    numbers["Pruning steps (1 = one-shot)"].set_value(steps)
    numbers["Maximum structural ratio"].set_value(max_sparsity)
    numbers["Sequences per micro-batch (0: by device)"].set_value(4)
