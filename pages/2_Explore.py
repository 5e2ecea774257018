"""Explore: scrub along a trajectory and see which heads and channels are gone at each point.

Everything drawn for a point is a threshold on the removal steps prepared once per trajectory
(``gisp_engine.explore.view.TrajectoryView``), so a slider move only redraws.
"""

import time
from pathlib import Path

import pandas as pd
import streamlit as st

import explorer_ui as ui
from gisp_engine.explore import explain, figures

ui.page_setup("Explore")
st.title("Explore a trajectory")

path, view, _ = ui.picked_trajectory(load=False)


@st.cache_data(max_entries=8, show_spinner=False)
def head_hover(path: str, stamp_key: int):
    return figures.head_hover(ui.view_for(path))


# ---- why a structure was removed: every figure cached per trajectory (and structure or step), as its chart spec --
@st.cache_data(max_entries=64, show_spinner=False)
def history_figure(path: str, stamp_key: int, layer: int, kind: str, index: int, head_unit: str):
    history = explain.structure_history(ui.load_trajectory(path), (layer, kind, index))
    return ui.chart_spec(figures.structure_history_figure(history, head_unit)), history.to_dict()


@st.cache_data(max_entries=32, show_spinner=False)
def distribution_figure(path: str, stamp_key: int, step: int, head_unit: str):
    return ui.chart_spec(
        figures.score_distribution_figure(explain.step_scores(ui.load_trajectory(path), step), head_unit)
    )


@st.cache_data(max_entries=8, show_spinner=False)
def stability(path: str, stamp_key: int):
    result = explain.rank_stability(ui.load_trajectory(path))
    figure = None if result.fixed else figures.rank_stability_figure(result, ui.view_for(path).param_sparsity)
    return result.to_dict(), None if figure is None else ui.chart_spec(figure)


@st.cache_data(max_entries=16, show_spinner="One forward pass with eager attention…")
def attention(path: str, stamp_key: int, text: str, step: int):
    """Every layer's attention weights for ``text``: per (model, text) for the dense model, per step for a step."""
    traj = ui.load_trajectory(path)
    dense = ui.dense_model(ui.model_id(traj), "cpu", "float32")
    return explain.attention_patterns(dense, text, traj if step else None, step)


def has_scores(path: str) -> bool:
    return ui.load_trajectory(path).scores is not None


st.caption(
    f"{view.model} · method {view.method} · objective {view.objective} · {view.num_steps} steps · "
    f"heads are {view.head_unit}s · "
    f"protected layers {view.protected_layers or 'none'} · `{view.key or Path(path).name}`"
)

slot = Path(path).name
step_key = f"explore_step_{slot}"
play_key = f"explore_play_{slot}"
FRAME_S = 0.8  # seconds per step while playing


restart_key = f"explore_restart_{slot}"


def _toggle_play() -> None:
    playing = not st.session_state.get(play_key, False)
    if playing and st.session_state.get(step_key, 0) >= view.num_steps:
        st.session_state[restart_key] = True  # play again from the dense model
    st.session_state[play_key] = playing


def _scrub(playing: bool) -> None:
    started = time.perf_counter()
    if step_key not in st.session_state:
        st.session_state[step_key] = ui.chosen_step(path, view)
    c_slider, c_play = st.columns([6, 1], vertical_alignment="bottom")
    # the button first: a click on Pause must not advance the slider once more
    if c_play.button(
        "⏸ Pause" if playing else "▶ Play",
        key=f"play_button_{slot}",
        width="stretch",
        help="Step through the trajectory, one subnetwork at a time",
    ):
        _toggle_play()
        st.rerun()
    if playing:
        nxt = 0 if st.session_state.pop(restart_key, False) else st.session_state[step_key] + 1
        if nxt > view.num_steps:
            st.session_state[play_key] = False
            st.rerun()  # whole page: stop the timer
        st.session_state[step_key] = nxt
    step = c_slider.select_slider(
        "Parameter sparsity (the nested subnetwork after each step)",
        options=list(range(view.num_steps + 1)),
        format_func=view.step_label,
        key=step_key,
    )
    ui.remember_step(path, step)
    at = view.at(step)

    m = st.columns(6)
    m[0].metric("Parameter sparsity", f"{at.param_sparsity:.1%}")
    m[1].metric("Structural ratio", f"{at.structural_ratio:.1%}", help="fraction of heads and channels removed")
    m[2].metric(
        "Kept parameters",
        f"{at.kept_params / 1e6:.2f} M",
        help=f"decoder linear weights kept, of {at.total_params / 1e6:.2f} M (embeddings and LM head excluded)",
    )
    m[3].metric(f"{view.head_unit.capitalize()}s kept (of {view.head_removal.size:,})", f"{at.kept_heads:,}")
    m[4].metric(f"Channels kept (of {view.channel_removal.size:,})", f"{at.kept_channels:,}", help="MLP channels")
    m[5].metric("Calibration loss", f"{at.loss:.3f}", help="mean NLL in nats on the calibration set")

    left, right = st.columns([2, 3])
    head_click = ui.plotly_chart(
        figures.head_survival_figure(view, at, head_hover(path, ui.stamp(path))), f"heads_{slot}", left, clickable=True
    )
    layout = right.radio(
        "MLP channels",
        ["sorted by removal", "original order, grouped"],
        horizontal=True,
        key=f"channel_layout_{slot}",
        label_visibility="collapsed",
    )
    channel_fig = (
        figures.channel_survival_figure(view, at)
        if layout == "sorted by removal"
        else figures.channel_bins_figure(view, at, 64)
    )
    channel_click = ui.plotly_chart(channel_fig, f"channels_{slot}", right, clickable=True)
    _take_click(head_click, "head")
    _take_click(channel_click, "channel")

    left, right = st.columns(2)
    ui.plotly_chart(figures.layer_fraction_figure(view, at), f"layers_{slot}", left)
    ui.plotly_chart(figures.trajectory_curve_figure(view, step, ui.evaluations(path)), f"curve_{slot}", right)
    with st.expander("Per-layer counts at this point"):
        st.dataframe(pd.DataFrame(view.layer_table(step)), hide_index=True)
    _why(step, playing)
    st.caption(
        f"Hover a cell to name the structure (layer, kind, index), its removal step and score; click it for its "
        f"history below. Server time for this point: {1e3 * (time.perf_counter() - started):.0f} ms."
    )


STRUCT_KEYS = {name: f"explore_structure_{name}_{slot}" for name in ("layer", "kind", "index")}


def _take_click(click: dict | None, kind: str) -> None:
    """A click on a heatmap cell chooses that structure (once per click: the component keeps its last value)."""
    seen = f"explore_click_seen_{kind}_{slot}"
    if not click or st.session_state.get(seen) == click.get("at"):
        return
    st.session_state[seen] = click.get("at")
    try:
        layer = int(click["y"])
        custom = click.get("customdata")
        # heads: the column is the head unit; channels: the cell's customdata starts with its channel index
        index = int(click["x"]) if kind == "head" else int(custom[0] if isinstance(custom, list) else click["x"])
    except (KeyError, TypeError, ValueError, IndexError):
        return
    st.session_state[STRUCT_KEYS["layer"]] = layer
    st.session_state[STRUCT_KEYS["kind"]] = kind
    st.session_state[STRUCT_KEYS["index"]] = index


def _why(step: int, playing: bool) -> None:
    """One structure's history, the scores of the step, how far the ranking drifts, and what a head attends to."""
    st.subheader("Why was it removed?")
    if not has_scores(path):
        st.info(f"No score history: {explain.NO_SCORES}.")
        return
    stamp = ui.stamp(path)
    first_scored = next((i for i in range(view.num_layers) if i not in view.protected_layers), 0)
    st.session_state.setdefault(STRUCT_KEYS["layer"], first_scored)
    st.session_state.setdefault(STRUCT_KEYS["kind"], "head")
    st.session_state.setdefault(STRUCT_KEYS["index"], 0)
    c_layer, c_kind, c_index = st.columns(3)
    layer = c_layer.number_input("Layer", 0, view.num_layers - 1, step=1, key=STRUCT_KEYS["layer"])
    kind = c_kind.radio("Kind", ["head", "channel"], horizontal=True, key=STRUCT_KEYS["kind"])
    index = c_index.number_input(f"Index ({view.head_unit} or channel)", 0, step=1, key=STRUCT_KEYS["index"])
    with ui.guard("", stop=False):
        figure, story = history_figure(path, stamp, int(layer), kind, int(index), view.head_unit)
        ui.plotly_chart(figure, f"history_{slot}", reveal=True)  # a click on a heatmap cell shows it
    ranked = max(step, 1)
    left, right = st.columns(2)
    with ui.guard("", stop=False):
        ui.plotly_chart(distribution_figure(path, stamp, ranked, view.head_unit), f"scores_{slot}", left)
        left.caption(
            f"What step {ranked} ranked: the scores of every structure still there, measured on the model "
            f"after {ranked - 1} steps; the dashed line is the highest score it removed. Boxes: each "
            "layer's quartiles, whiskers its lowest and highest."
        )
    with ui.guard("", stop=False):
        result, figure = stability(path, stamp)
        if figure is None:
            right.info(f"Rank stability: {result['reason']}.")
        else:
            ui.plotly_chart(figure, f"stability_{slot}", right)
            right.caption(
                "Spearman: does a step still rank the remaining structures as the dense model did? "
                "Jaccard: of what the trajectory removed so far, how much would the dense ranking alone "
                "have removed at the same count? Below 1, re-scoring changed the choice."
            )
    if kind == "head" and not playing:
        _attention(step, int(layer), int(index))


def _attention(step: int, layer: int, unit: int) -> None:
    with st.expander(f"What layer {layer} · {view.head_unit} {unit} attends to"):
        text = st.text_input(
            "Text",
            explain.DEFAULT_ATTENTION_TEXT,
            key=f"explore_attention_text_{slot}",
            help=f"At most {explain.MAX_ATTENTION_TOKENS} tokens; about 40 stay readable",
        )
        if not st.toggle(
            "Run the model on this text",
            key=f"explore_attention_on_{slot}",
            help="One forward pass of the dense model with eager attention (and of this step's model); "
            "every layer's patterns are kept, so other heads of this text draw at once",
        ):
            return
        with ui.guard("", stop=False):
            traj = ui.load_trajectory(path)
            dense = attention(path, ui.stamp(path), text, 0)
            at_step = attention(path, ui.stamp(path), text, step) if step else None
            g = traj.geometry
            ui.plotly_chart(
                figures.attention_figure(
                    dense, layer, unit, traj.gqa, g.num_heads // g.num_kv_heads, view.head_unit, at_step, step
                ),
                f"attention_{slot}",
            )


def _scrub_still() -> None:
    _scrub(False)


def _scrub_playing() -> None:
    _scrub(True)


if st.session_state.get(play_key, False):
    st.fragment(run_every=FRAME_S)(_scrub_playing)()
else:
    st.fragment(_scrub_still)()
