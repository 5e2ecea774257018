"""Explore: scrub along a trajectory and see which heads and channels are gone at each point.

Everything drawn for a point is a threshold on the removal steps prepared once per trajectory
(``gisp_engine.explore.TrajectoryView``), so a slider move only redraws.
"""

import time
from pathlib import Path

import pandas as pd
import streamlit as st

import explorer_ui as ui
from gisp_engine import figures

ui.page_setup("Explore")
st.title("Explore a trajectory")

path, view, _ = ui.picked_trajectory(load=False)


@st.cache_data(max_entries=8, show_spinner=False)
def head_hover(path: str, stamp_key: int):
    return figures.head_hover(ui.view_for(path))


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
    if c_play.button("⏸ Pause" if playing else "▶ Play", key=f"play_button_{slot}", width="stretch",
                     help="Step through the trajectory, one subnetwork at a time"):
        _toggle_play()
        st.rerun()
    if playing:
        nxt = 0 if st.session_state.pop(restart_key, False) else st.session_state[step_key] + 1
        if nxt > view.num_steps:
            st.session_state[play_key] = False
            st.rerun()  # whole page: stop the timer
        st.session_state[step_key] = nxt
    step = c_slider.select_slider(
        "Parameter sparsity (the nested subnetwork after each step)", options=list(range(view.num_steps + 1)),
        format_func=view.step_label, key=step_key,
    )
    ui.remember_step(path, step)
    at = view.at(step)

    m = st.columns(6)
    m[0].metric("Parameter sparsity", f"{at.param_sparsity:.1%}")
    m[1].metric("Structural ratio", f"{at.structural_ratio:.1%}", help="fraction of heads and channels removed")
    m[2].metric("Kept parameters", f"{at.kept_params / 1e6:.2f} M",
                help=f"decoder linear weights kept, of {at.total_params / 1e6:.2f} M (embeddings and LM head excluded)")
    m[3].metric(f"{view.head_unit.capitalize()}s kept (of {view.head_removal.size:,})", f"{at.kept_heads:,}")
    m[4].metric(f"MLP channels kept (of {view.channel_removal.size:,})", f"{at.kept_channels:,}")
    m[5].metric("Calibration loss", f"{at.loss:.3f}", help="mean NLL in nats on the calibration set")

    left, right = st.columns([2, 3])
    ui.plotly_chart(figures.head_survival_figure(view, at, head_hover(path, ui.stamp(path))), f"heads_{slot}", left)
    layout = right.radio("MLP channels", ["sorted by removal", "original order, grouped"], horizontal=True,
                         key=f"channel_layout_{slot}", label_visibility="collapsed")
    channel_fig = (figures.channel_survival_figure(view, at) if layout == "sorted by removal"
                   else figures.channel_bins_figure(view, at, 64))
    ui.plotly_chart(channel_fig, f"channels_{slot}", right)

    left, right = st.columns(2)
    ui.plotly_chart(figures.layer_fraction_figure(view, at), f"layers_{slot}", left)
    ui.plotly_chart(figures.trajectory_curve_figure(view, step, ui.evaluations(path)), f"curve_{slot}", right)
    with st.expander("Per-layer counts at this point"):
        st.dataframe(pd.DataFrame(view.layer_table(step)), hide_index=True)
    st.caption(
        f"Hover a cell to name the structure (layer, kind, index), its removal step and score. "
        f"Server time for this point: {1e3 * (time.perf_counter() - started):.0f} ms."
    )


def _scrub_still() -> None:
    _scrub(False)


def _scrub_playing() -> None:
    _scrub(True)


if st.session_state.get(play_key, False):
    st.fragment(run_every=FRAME_S)(_scrub_playing)()
else:
    st.fragment(_scrub_still)()
