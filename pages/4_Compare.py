"""Compare: two trajectories of the same model (objectives, one-shot vs iterative, methods, settings).

Their quality (and cost) curves on the same axes, the difference at a chosen sparsity in words,
the overlap of their kept sets across parameter sparsity, and which structures each keeps.
"""

import hashlib

import streamlit as st

import explorer_ui as ui
from gisp_engine.choose.recommend import compare_at
from gisp_engine.choose.table import sweep_table
from gisp_engine.explore import figures
from gisp_engine.explore import view as explore

ui.page_setup("Compare")
st.title("Compare two trajectories")
st.caption(
    "Both must be of the same model and count heads the same way (GQA policy). Each is taken at its step nearest "
    "a sparsity; only points where the two are within 5 points of parameter sparsity are compared (a one-shot "
    "trajectory meets an iterative one at the dense model and at its single step)."
)

c1, c2 = st.columns(2)
row_a = ui.pick_trajectory("Trajectory A", key="compare_a", container=c1)
if row_a is None:
    st.stop()
row_b = ui.pick_trajectory("Trajectory B", slot="compare_b_path", key="compare_b", container=c2, avoid=row_a["path"])
path_a, path_b = row_a["path"], row_b["path"]
if path_a == path_b:
    st.info("A and B are the same trajectory: choose another for B.")


@st.cache_data(max_entries=8, show_spinner="Comparing the kept sets…")
def jaccard(path_a: str, stamp_a: int, path_b: str, stamp_b: int) -> explore.JaccardCurve:
    return explore.jaccard_curve(ui.load_trajectory(path_a), ui.load_trajectory(path_b))


@st.cache_data(max_entries=32, show_spinner=False)
def difference(path_a: str, stamp_a: int, path_b: str, stamp_b: int, step_a: int, step_b: int) -> explore.Difference:
    return explore.difference(ui.load_trajectory(path_a), ui.load_trajectory(path_b), step_a, step_b)


stamps = (path_a, ui.stamp(path_a), path_b, ui.stamp(path_b))
with ui.guard("These two cannot be compared: "):
    curve = jaccard(*stamps)
    view_a = ui.view_for(path_a)

points = list(range(len(curve.sparsity)))
choice_key = "compare_point_" + hashlib.sha256(f"{path_a}|{path_b}".encode()).hexdigest()[:12]
if choice_key not in st.session_state:
    st.session_state[choice_key] = int(abs(curve.sparsity - 0.4).argmin())
if len(points) > 1:
    i = st.select_slider(
        "Parameter sparsity",
        options=points,
        key=choice_key,
        format_func=lambda k: f"A {curve.sparsity_a[k]:.1%} · B {curve.sparsity_b[k]:.1%}",
        help="Each trajectory is taken at its step nearest this parameter sparsity.",
    )
else:
    i = 0
    st.info("The two trajectories share no sparsity but the dense model (their steps are more than 5 points apart).")
step_a, step_b = int(curve.step_a[i]), int(curve.step_b[i])
gap = abs(curve.sparsity_a[i] - curve.sparsity_b[i])
if gap > 0.005:
    st.caption(f"The two points differ by {gap:.1%} parameter sparsity: the nearest steps the trajectories have.")
with ui.guard("These two cannot be compared: "):
    diff = difference(*stamps, step_a, step_b)

m = st.columns(5)
m[0].metric("Jaccard (all structures)", f"{diff.jaccard:.3f}")
m[1].metric("A: step, parameter sparsity", f"{step_a} · {curve.sparsity_a[i]:.1%}")
m[2].metric("B: step, parameter sparsity", f"{step_b} · {curve.sparsity_b[i]:.1%}")
m[3].metric("Kept only in A", diff.counts["kept only in A"])
m[4].metric("Kept only in B", diff.counts["kept only in B"])


# ---- quality on the same axes --------------------------------------------------------------------
@st.cache_data(max_entries=16, show_spinner=False)
def table_of(path: str, stamp: int, evaluations: list[dict], prefer: tuple[tuple[str, str], ...] = ()):
    return sweep_table(ui.load_trajectory(path), evaluations, prefer=dict(prefer))


table_a = table_of(path_a, ui.stamp(path_a), ui.evaluations(path_a))
# B shows the series measured with A's settings wherever B has one: like is compared with like
table_b = table_of(path_b, ui.stamp(path_b), ui.evaluations(path_b), tuple(sorted(table_a.series.items())))
shared = [c for c in table_a.quality if c in table_b.quality]
shared += [c for c in ("prefill_speedup", "peak_bytes") if c in table_a.cost and c in table_b.cost]
if shared:
    column = st.selectbox(
        "Quality measure",
        shared,
        key="compare_column",
        help="Measures remembered for both trajectories (sweeps on the Choose page, checks on Evaluate).",
    )
    st.plotly_chart(
        figures.compare_quality_figure({"A": table_a, "B": table_b}, column, float(curve.sparsity[i])),
        key="compare_quality",
    )
    words = compare_at(table_a, table_b, step_a, step_b, column)
    label_a = table_a.labels.get(column, table_a.cost_label)
    label_b = table_b.labels.get(column, table_b.cost_label)
    if label_a != label_b:  # two series of different settings are not the same measure
        st.warning(
            f"A and B were measured with different settings, so the two curves are not directly comparable: "
            f"A: {label_a}; B: {label_b}. Sweep both with the same settings on the Choose page."
        )
    else:
        st.caption(f"Both measured with: {label_a}")
    if words:
        st.markdown(f"**{words}.**")
    else:
        st.caption(f"{column} is not measured at both chosen points (A step {step_a}, B step {step_b}).")
else:
    st.info(
        "No quality measure is remembered for both trajectories: sweep each on the Choose page to draw their "
        "curves on the same axes."
    )
    st.page_link("pages/6_Choose.py", label="Sweep on the Choose page", icon=":material/target:")

st.plotly_chart(figures.jaccard_figure(curve, float(curve.sparsity[i])), key="compare_jaccard")
left, right = st.columns([2, 3])
left.plotly_chart(figures.difference_head_figure(diff, view_a.head_unit), key="compare_heads")
right.plotly_chart(figures.difference_channel_figure(diff), key="compare_channels")
st.caption(
    "Kept in both: light grey; only in A: blue; only in B: orange; removed in both: dark grey. "
    "Protected layers are kept in both and raise the overall index; the head and channel curves show each kind alone."
)
