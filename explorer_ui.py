"""What the explorer's pages share: error display, the trajectory and step pickers, cached loaders.

The pages are thin: they read trajectories from the cache and ask the engine for everything
else. Derived tables go through ``st.cache_data`` (keyed by the trajectory's folder and the
time its files were written), models through ``st.cache_resource``.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path

import streamlit as st

SELECTED = "selected_trajectory"  # path of the trajectory chosen on any page
CHOSEN_STEPS = "chosen_steps"  # {trajectory path: step} chosen on any page


def page_setup(title: str) -> None:
    _leave_legacy_navigation()
    st.set_page_config(page_title=f"{title} · GISP Explorer", layout="wide")
    show_mode(serving_mode())


_VIA_APP = threading.local()  # set while app.py's st.navigation runs the page (per script thread)


@contextlib.contextmanager
def navigating() -> Iterator[None]:
    """app.py runs the chosen page inside this: the page then knows it was reached through app.py."""
    _VIA_APP.active = True
    try:
        yield
    finally:
        _VIA_APP.active = False


def _leave_legacy_navigation() -> None:
    """A page URL opened first in a fresh server runs under Streamlit's legacy ``pages/`` navigation,
    without app.py (the sidebar then lists "app" and every file); one rerun goes through app.py."""
    if getattr(_VIA_APP, "active", False) or st.session_state.get("_left_legacy_navigation"):
        return  # once per session is enough: the server then stays on app.py's navigation
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # another Streamlit: nothing to undo
        return
    st.session_state["_left_legacy_navigation"] = True
    PagesManager.uses_pages_directory = False  # what st.navigation itself sets
    st.rerun()


def _leave_legacy_navigation_on_import() -> None:
    """The same, as soon as a page imports this module: before the engine's imports, which take seconds on a cold
    start (during which the sidebar would list the file names)."""
    try:
        from streamlit.runtime.pages_manager import PagesManager
        from streamlit.runtime.scriptrunner import get_script_run_ctx
    except ImportError:
        return
    if get_script_run_ctx() is not None and PagesManager.uses_pages_directory:
        _leave_legacy_navigation()


_leave_legacy_navigation_on_import()

from gisp_engine.core import serving  # noqa: E402
from gisp_engine.core.errors import GispError  # noqa: E402
from gisp_engine.evaluation import checks  # noqa: E402
from gisp_engine.explore import view as explore  # noqa: E402
from gisp_engine.jobs import background as jobs  # noqa: E402
from gisp_engine.pruning.trajectory import META_FILE  # noqa: E402


# ---- who may change things ----------------------------------------------------------------------
def serving_mode() -> serving.Mode:
    """The app's mode from the address Streamlit listens on (``make app``: ``--server.address=$GISP_ADDRESS``);
    set for the engine too, which refuses what a viewer may not do."""
    mode = serving.mode_for(st.get_option("server.address"))
    serving.set_mode(mode)
    if not mode.writes:  # an uncaught error's traceback would name the server's files
        st.set_option("client.showErrorDetails", "type")
    return mode


def show_mode(mode: serving.Mode) -> None:
    """The sidebar says which mode the app is in, and why."""
    if mode.name == "viewer":
        st.sidebar.info(f"**Viewer mode**: {mode.reason}.", icon=":material/visibility:")
    elif mode.name == "shared":
        st.sidebar.warning(f"**Changes allowed on a network**: {mode.reason}.", icon=":material/lan:")
    else:
        st.sidebar.caption(f"Local mode: {mode.reason}.")


def can_change() -> bool:
    return serving.current_mode().writes


def viewer_note(what: str) -> None:
    """In place of what a viewer may not do: what it is, and why it is not here."""
    st.info(f"{what} is not available in viewer mode: {serving.current_mode().reason}.", icon=":material/lock:")


def public(text: str) -> str:
    """A message fit for the browser: no server path outside the project's folders."""
    return serving.public_message(str(text))


@contextlib.contextmanager
def guard(what: str = "", stop: bool = True) -> Iterator[None]:
    """Show a user-facing error in the page instead of a traceback; then stop the rest of the page, or with
    ``stop=False`` only the rest of the block (what follows it, a list of runs, is still drawn)."""
    try:
        yield
    except GispError as exc:
        st.error(public(f"{what}{exc}"))
        if stop:
            st.stop()
    except (MemoryError, OSError, RuntimeError, ValueError, KeyError, IndexError, TypeError, ImportError) as exc:
        traceback.print_exc(file=sys.stderr)  # the server log keeps the details
        st.error(public(f"{what}unexpected {type(exc).__name__}: {exc}"))
        if stop:
            st.stop()


#: The devices a page offers (the CLI takes ``cuda:N`` too); ``auto`` is the GPU when there is one.
DEVICES = ("auto", "cpu", "cuda")


# ---- a run's settings ---------------------------------------------------------------------------
def option_input(name: str, container=None, *, help: str | None = None, choices=None):
    """The Run page's widget for the setting ``name`` of ``PruneConfig``, made from its declaration
    (``gisp_engine.pruning.config.OPTIONS``: label, help, default, choices, least value), under the key
    ``run_<name>``: a select box for a choice, a number field for a number, a check box for a switch, else a text
    field. A number whose default is None ("by device", "off") offers one below its least value for that, named in
    the label. Returns the value as PruneConfig takes it. ``choices``: suggestions for a free setting (the device).
    """
    from gisp_engine.pruning.config import OPTIONS, PruneConfig

    kind, opt = OPTIONS[name]
    where = container or st
    default = PruneConfig.__dataclass_fields__[name].default
    key, text = f"run_{name}", help or opt.help
    allowed = list(choices or opt.allowed() or [])
    if allowed:
        return where.selectbox(opt.label, allowed, index=allowed.index(default), key=key, help=text)
    if kind == "bool":
        return where.checkbox(opt.label, value=default, key=key, help=text)
    if kind == "float":
        low, high = (0.01, 0.99) if opt.fraction else (None, None)
        value = where.number_input(
            opt.label, low, high, float(default), step=opt.step or 0.05, format="%.2f", key=key, help=text
        )
        return float(value)
    if kind == "int":
        step = int(opt.step or 1)
        if default is None:
            off = (opt.minimum or 0) - 1
            label = f"{opt.label} ({off}: {opt.unset})"
            value = where.number_input(label, min_value=off, value=off, step=step, key=key, help=text)
            return None if value == off else int(value)
        return int(where.number_input(opt.label, min_value=opt.minimum, value=default, step=step, key=key, help=text))
    return where.text_input(opt.label, default or "", key=key, help=text)


# ---- background jobs -------------------------------------------------------------------------
def resumed_note(job) -> str:
    """Where a run that continues an earlier one of the same request began, in words ("" for a run begun anew)."""
    if not job.resumed_from:
        return ""
    if job.kind == "sweep":
        return f"resumed: {job.resumed_from} of {job.total} points were done before"
    return f"resumed from step {job.resumed_from} of {job.total}"


def job_progress(job) -> None:
    """A running job's progress bar, with its latest message (and where it resumed from)."""
    text = " · ".join(filter(None, [job.message or job.state, resumed_note(job)]))
    st.progress(min(max(job.fraction, 0.0), 1.0), text=text)


def cancel_button(job, label: str = "Cancel") -> None:
    if not can_change():  # a viewer follows runs, it never ends them
        return
    if st.button(label, key=f"cancel_{job.key}"):
        with guard("Could not cancel: "):
            jobs.cancel(job.key)
        st.rerun()


def job_outcome(job, done: str, what: str, cancelled: str) -> None:
    """A finished job in one line: ``done`` on success (and where it resumed from), else ``what`` failed or was
    cancelled."""
    if job.state == "done":
        note = resumed_note(job)
        st.success(f"{done} ({note})" if note else done)
    elif job.state == "failed":
        st.error(public(f"{what} failed: {job.error}"))
    else:
        st.warning(cancelled)


# ---- trajectories ---------------------------------------------------------------------------
def stamp(path: str) -> int:
    """Changes whenever the trajectory folder is rewritten: part of every cache key below."""
    try:
        return (Path(path) / META_FILE).stat().st_mtime_ns
    except OSError:
        return 0


def trajectory_rows() -> list[dict]:
    return explore.available_trajectories()


def pick_trajectory(
    label: str = "Trajectory",
    slot: str = SELECTED,
    key: str = "pick_trajectory",
    container=None,
    avoid: str | None = None,
) -> dict | None:
    """A select box over the cache and the examples; the choice is remembered across pages.

    ``avoid``: a path not to offer first (the other side of a comparison).
    """
    box = container or st.sidebar
    rows = trajectory_rows()
    if not rows:
        box.info("No trajectories yet: start one on the Run page, or restore `cache/examples/` from the repository.")
        return None
    paths = [r["path"] for r in rows]
    by_path = {r["path"]: r for r in rows}
    remembered = st.session_state.get(slot)
    if key in st.session_state and st.session_state[key] not in by_path:
        del st.session_state[key]  # the trajectory it named is gone
    if remembered in by_path:
        index = paths.index(remembered)
    else:  # a session that chose nothing opens on an example, never on the newest run of another session
        order = [i for i, r in enumerate(rows) if r["source"] == "example"] + list(range(len(rows)))
        index = next((i for i in order if paths[i] != avoid), 0)
    choice = box.selectbox(label, paths, index=index, key=key, format_func=lambda p: explore.describe(by_path[p]))
    st.session_state[slot] = choice
    return by_path[choice]


def picked_trajectory(load: bool = True):
    """The trajectory chosen in the sidebar: (path, view, trajectory or None); stops the page without one."""
    row = pick_trajectory()
    if row is None:
        st.stop()
    path = row["path"]
    with guard("Cannot read this trajectory: "):
        view = view_for(path)
        traj = load_trajectory(path) if load else None
    return path, view, traj


def remember_trajectory(path: str | None) -> None:
    """Make ``path`` the trajectory the pages show next."""
    if path:
        st.session_state[SELECTED] = str(path)
        st.session_state.pop("pick_trajectory", None)


@st.cache_resource(max_entries=8, show_spinner=False)
def trajectory(path: str, stamp_key: int):
    """The trajectory object (read-only; shared by the pages)."""
    return explore.load_trajectory(path)


def load_trajectory(path: str):
    return trajectory(path, stamp(path))


@st.cache_data(max_entries=8, show_spinner="Preparing the trajectory…")
def trajectory_view(path: str, stamp_key: int) -> explore.TrajectoryView:
    return explore.TrajectoryView.from_trajectory(load_trajectory(path))


def view_for(path: str) -> explore.TrajectoryView:
    return trajectory_view(path, stamp(path))


def chosen_step(path: str, view: explore.TrajectoryView) -> int:
    """The step last chosen for this trajectory on any page, else the one nearest 40% parameter sparsity."""
    steps = st.session_state.get(CHOSEN_STEPS, {})
    if path in steps and 0 <= steps[path] <= view.num_steps:
        return int(steps[path])
    return int(abs(view.param_sparsity - 0.4).argmin())


def remember_step(path: str, step: int) -> None:
    st.session_state.setdefault(CHOSEN_STEPS, {})[path] = int(step)


STEP_SLIDERS = ("explore_step", "evaluate_step", "export_step")  # key prefixes of the pages' step sliders


def jump_to_step(path: str, step: int) -> None:
    """Make ``step`` the chosen point of ``path`` on every page (their sliders start there next time)."""
    remember_step(path, step)
    for prefix in STEP_SLIDERS:
        st.session_state.pop(f"{prefix}_{Path(path).name}", None)


def step_slider(
    path: str, view: explore.TrajectoryView, key_prefix: str, container=None, label: str = "Parameter sparsity"
) -> int:
    """A slider over the trajectory's steps, labelled by parameter sparsity; returns the step."""
    box = container or st
    key = f"{key_prefix}_{Path(path).name}"
    if key not in st.session_state:
        st.session_state[key] = chosen_step(path, view)
    step = box.select_slider(
        label,
        options=list(range(view.num_steps + 1)),
        format_func=view.step_label,
        key=key,
        help="Snaps to the trajectory's steps: every step is one of the nested subnetworks.",
    )
    remember_step(path, step)
    return int(step)


# ---- evaluations ----------------------------------------------------------------------------
def _evals_stamp(path: str) -> int:
    try:
        return checks.evals_path(load_trajectory(path)).stat().st_mtime_ns
    except OSError:
        return 0


@st.cache_data(max_entries=16, show_spinner=False)
def _evaluations(path: str, stamp_key: int, evals_stamp: int) -> list[dict]:
    return checks.load_evaluations(load_trajectory(path))


def evaluations(path: str) -> list[dict]:
    """Remembered evaluations of the trajectory (re-read when the file changes)."""
    return _evaluations(path, stamp(path), _evals_stamp(path))


# ---- models ---------------------------------------------------------------------------------
@st.cache_resource(max_entries=1, show_spinner="Loading the dense model…")
def dense_model(model: str, device: str, dtype: str):
    from gisp_engine.model.loading import load_model

    return load_model(model, device, dtype)


@st.cache_resource(max_entries=2, show_spinner="Building the pruned model…")
def model_at_step(path: str, stamp_key: int, step: int, device: str, dtype: str):
    traj = load_trajectory(path)
    return checks.model_at_step(dense_model(model_id(traj), device, dtype), traj, step)


def dense_copy(model: str, device: str, dtype: str):
    """A private copy of the cached dense model, for engine calls that change the model they get."""
    import copy
    import dataclasses

    dense = dense_model(model, device, dtype)
    return dataclasses.replace(dense, model=copy.deepcopy(dense.model))


def model_id(traj) -> str:
    """The model a trajectory was built for, as its run named it."""
    from gisp_engine.pruning.subnetwork import recorded_model

    return recorded_model(traj)


# ---- charts that a slider redraws -----------------------------------------------------------
# st.plotly_chart's element id hashes the figure (Streamlit 1.67), so every changed figure is a new element: the
# browser throws the chart away and builds it again (Plotly.newPlot, Streamlit's theme pass, a second render for
# the width), for each chart at each slider move. This chart is an iframe that stays (its identity is its key) and
# redraws with Plotly.react. Measured with benchmarks/bench_ui.py: half the browser's work per Explore move.
_CHART_HTML = """<!doctype html>
<html><head><meta charset="utf-8">
<style>html, body { margin: 0; padding: 0; overflow: hidden; background: transparent; }</style>
<script src="plotly.min.js"></script></head>
<body><div id="chart"></div><script>
"use strict";
const post = (type, extra) => window.parent.postMessage(Object.assign({isStreamlitMessage: true, type}, extra), "*");
let shown = null, pending = null, height = 0, listening = false, visible = false;
// a click on a point becomes the component's value (the page reruns); "at" tells a second click on it apart
const clicked = (event) => {
  const p = event && event.points && event.points[0];
  if (!p) return;
  post("streamlit:setComponentValue", {dataType: "json", value: {
    x: p.x, y: p.y, curve: p.curveNumber, customdata: p.customdata === undefined ? null : p.customdata,
    at: Date.now()}});
};
// a chart off screen redraws when it comes into view, not at every slider move (the browser's time goes to what
// the user sees); the frame keeps its height meanwhile, so the page does not move
const draw = () => {
  if (!pending || !visible) return;
  const [figure, args] = pending;
  pending = null;
  delete figure.layout.template;  // plotly.js's own plain style (plotly.py's default template is grey)
  Plotly.react("chart", figure.data, Object.assign({}, figure.layout, {autosize: true}),
               Object.assign({responsive: true, displaylogo: false}, args.config || {}));
  if (args.clickable && !listening) { listening = true; document.getElementById("chart").on("plotly_click", clicked); }
};
new IntersectionObserver((entries) => {
  visible = entries[entries.length - 1].isIntersecting;
  draw();
}).observe(document.body);
window.addEventListener("message", (event) => {
  const msg = event.data;
  if (!msg || msg.type !== "streamlit:render" || msg.args.spec === shown) return;
  const first = shown === null;
  shown = msg.args.spec;
  pending = [JSON.parse(shown), msg.args];
  const wanted = pending[0].layout.height || 450;
  if (wanted !== height) {
    height = wanted;
    document.body.style.height = wanted + "px";
    post("streamlit:setFrameHeight", {height: wanted});
  }
  // a chart that answers a click elsewhere (a structure's history) comes into view when it changes
  if (msg.args.reveal && !first && window.frameElement) {
    window.frameElement.scrollIntoView({block: "nearest", behavior: "smooth"});
  }
  draw();
});
post("streamlit:componentReady", {apiVersion: 1});
</script></body></html>
"""
_CHART_COMPONENT = None


def _chart_folder() -> Path:
    """The component's two files (this page and plotly.js of the installed plotly), written once into the cache."""
    import plotly

    from gisp_engine.core import settings
    from gisp_engine.core.fsutil import staging_dir

    digest = hashlib.sha256(f"{_CHART_HTML}{plotly.__version__}".encode()).hexdigest()[:12]
    folder = settings.cache_dir() / "ui" / f"plotly-chart-{digest}"
    if not (folder / "index.html").is_file():
        with staging_dir(folder) as tmp:
            shutil.copyfile(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", tmp / "plotly.min.js")
            (tmp / "index.html").write_text(_CHART_HTML, encoding="utf-8")
    return folder


def chart_spec(figure) -> str:
    """A figure as the chart frame receives it (plotly's JSON): what a cached chart keeps, since a string comes out
    of ``st.cache_data`` at once where a figure is unpickled and serialized again at every rerun."""
    import plotly.io

    return plotly.io.to_json(figure, validate=False)


def plotly_chart(figure, key: str, container=None, clickable: bool = False, reveal: bool = False) -> dict | None:
    """A plotly figure that later reruns redraw in place (for charts a slider changes); ``key`` is its identity.

    ``figure``: a plotly figure, or its ``chart_spec`` (for figures kept in a cache).

    ``clickable``: a click on a point reruns the page and this returns the last point clicked (``x``, ``y``,
    ``curve``, ``customdata``, ``at``: when, so that a second click on it is new); None before any click.
    ``reveal``: when the figure changes after the first drawing, the page scrolls the chart into view (for a chart
    that answers a click elsewhere on the page).
    ``GISP_PLAIN_CHARTS=1``: Streamlit's own ``st.plotly_chart`` instead (its theme and toolbar; a browser that
    refuses the component's frame still draws the charts; benchmarks/bench_ui.py --plain-charts compares the two);
    there nothing is clickable (Streamlit's point selection ignores heatmap cells), and this returns None.
    """
    global _CHART_COMPONENT
    import plotly.io
    import streamlit.components.v1 as components

    from gisp_engine.core import settings

    if settings.plain_charts():
        # no clicks here: Streamlit's point selection never fires on a heatmap cell (tried in Chromium)
        if isinstance(figure, str):
            figure = plotly.io.from_json(figure, skip_invalid=True)
        (container or st).plotly_chart(figure, key=key, config={"displaylogo": False})
        return None
    folder = _chart_folder()
    if _CHART_COMPONENT is None or Path(_CHART_COMPONENT.path or "") != folder:
        _CHART_COMPONENT = components.declare_component("gisp_plotly_chart", path=str(folder))
    with container or contextlib.nullcontext():
        return _CHART_COMPONENT(
            spec=figure if isinstance(figure, str) else chart_spec(figure),
            key=key,
            default=None,
            clickable=clickable,
            reveal=reveal,
        )
