"""Choose: sweep a trajectory for quality and cost, set constraints, get the sparsest step that meets them.

Sweeps run in the background (``gisp_engine.jobs.submit_sweep``); every point is remembered in the
evaluation store, so the charts fill in as the sweep goes and a reload loses nothing.
"""

import streamlit as st

import explorer_ui as ui
from gisp_engine import checks, figures, jobs
from gisp_engine.cost import CostSpec
from gisp_engine.sweep import Constraints, SweepRequest, recommend, sweep_table

ui.page_setup("Choose")
st.title("Choose a deployment sparsity")
st.caption(
    "Every step of a trajectory is one nested subnetwork. Sweep them for quality (and cost), state what the "
    "deployment must meet, and the sparsest step that meets it all is recommended."
)

path, view, traj = ui.picked_trajectory()


# ---- the sweep ----------------------------------------------------------------------------------
def _sweep_form() -> None:
    available = checks.available_checks()
    with st.form("sweep_settings"):
        c1, c2, c3, c4 = st.columns([3, 1, 1, 1])
        tasks = c1.multiselect("Checks", list(available), default=["wikitext2"], format_func=lambda t: available[t].title,
                               help="Perplexity, each decision task, cmqa (all seven, with their average), gsm8k.")
        limit = c2.number_input("Limit (windows or items; 0 = all)", min_value=0, value=120, step=8,
                                help="120 windows of 128 tokens: the explorer's perplexity sweep.")
        seq_len = c3.number_input("Window length", min_value=2, value=128, step=64)
        device = c4.selectbox("Device", ["auto", "cpu", "cuda"])
        cost = st.checkbox("Also measure cost: prefill and decode speed, peak memory, weight bytes (relative to dense)",
                           value=False)
        go = st.form_submit_button("Sweep every step in the background", type="primary")
    if go:
        with ui.guard("Cannot start the sweep: "):
            request = SweepRequest(tasks=tuple(tasks), limit=int(limit) or None, seq_len=int(seq_len),
                                   cost=CostSpec() if cost else None)
            job = jobs.submit_sweep(traj, request, device=device)
        st.session_state[f"sweep_job_{path}"] = job.key


def _sweep_key() -> str | None:
    """This session's sweep of the trajectory, else one running for it (a reload, another tab)."""
    key = st.session_state.get(f"sweep_job_{path}")
    if key is None:
        running = [j for j in jobs.list_jobs(active_only=True, kind="sweep") if j.config.get("trajectory") == path]
        key = running[0].key if running else None
    return key


def _sweep_status() -> None:
    key = _sweep_key()
    job = jobs.status(key) if key else None
    if job is None:
        return
    if job.active:
        ui.job_progress(job)
        seen = st.session_state.get("sweep_points_seen")
        st.session_state["sweep_points_seen"] = job.step
        if seen is not None and job.step != seen:
            st.rerun()  # a point is finished: redraw the charts with it
        ui.cancel_button(job, "Cancel the sweep")
    else:
        ui.job_outcome(job, f"Sweep finished: {job.total} points in {job.elapsed_s or 0:.0f} s.", "The sweep",
                       "Sweep cancelled: the points it finished are kept; sweep again to continue.")
    if st.session_state.get("sweep_polling") and not job.active:
        st.session_state["sweep_polling"] = False
        st.rerun()  # the last points are in: draw them


with st.expander("Sweep this trajectory", expanded=not ui.evaluations(path)):
    _sweep_form()
    key = _sweep_key()
    running = bool(key and (job := jobs.status(key)) and job.active)
    st.session_state["sweep_polling"] = running
    if running:
        st.fragment(run_every=1.0)(_sweep_status)()
    else:
        _sweep_status()


@st.cache_data(max_entries=16, show_spinner=False)
def _table(path: str, stamp: int, evaluations: list[dict]):
    return sweep_table(ui.load_trajectory(path), evaluations)


table = _table(path, ui.stamp(path), ui.evaluations(path))
if not table.quality:
    st.info("No step of this trajectory is evaluated yet: sweep it above (or evaluate single points on Evaluate).")
    st.stop()

# ---- constraints ------------------------------------------------------------------------------
st.subheader("Constraints")
have_ppl = "wikitext2" in table.quality
accuracy_columns = table.accuracy_columns
have_cost = "prefill_speedup" in table.cost
c1, c2, c3 = st.columns(3)
max_ppl = max_ratio = min_avg = max_mem = min_speed = None
task_minimums: list[tuple[str, float]] = []
with c1:
    if have_ppl:
        kind = st.radio("Maximum perplexity", ["none", "absolute", "multiple of dense"], horizontal=True,
                        key="choose_ppl_kind")
        if kind == "absolute":
            max_ppl = st.number_input("Perplexity at most", min_value=0.0, value=round(2 * table.dense("wikitext2"), 1),
                                      key="choose_max_ppl")
        elif kind == "multiple of dense":
            max_ratio = st.number_input("Perplexity at most (x dense)", min_value=0.0, value=2.0, step=0.25,
                                        key="choose_max_ratio")
with c2:
    if "cmqa" in accuracy_columns:
        value = st.number_input("Minimum average accuracy (%; 0 = none)", min_value=0.0, max_value=100.0, value=0.0,
                                step=1.0, key="choose_min_avg")
        min_avg = value / 100 if value else None
    per_task = [c for c in accuracy_columns if c != "cmqa"]
    if per_task:
        for task in st.multiselect("Minimum accuracy per task", per_task, key="choose_tasks"):
            value = st.number_input(f"{task}: at least (%)", min_value=0.0, max_value=100.0,
                                    value=round(100 * table.dense(task) - 5, 1), step=1.0, key=f"choose_min_{task}")
            task_minimums.append((task, value / 100))
with c3:
    if have_cost:
        mem = st.number_input("Maximum peak memory (MiB; 0 = none)", min_value=0.0, value=0.0, step=16.0,
                              key="choose_max_mem")
        max_mem = mem or None
        speed = st.number_input("Minimum prefill speed-up (x dense; 0 = none)", min_value=0.0, value=0.0, step=0.1,
                                key="choose_min_speed")
        min_speed = speed or None
    else:
        st.caption("Sweep with cost to constrain memory and speed.")

with ui.guard("These constraints cannot be used: "):
    constraints = Constraints(max_perplexity=max_ppl, max_perplexity_ratio=max_ratio, min_average_accuracy=min_avg,
                              min_task_accuracy=tuple(task_minimums), max_memory_mb=max_mem,
                              min_prefill_speedup=min_speed)
    rec = recommend(table, constraints)

if rec.step is None:
    st.warning(rec.text)
else:
    st.success(f"**Recommended:** {rec.text}")
    left, right = st.columns([1, 3])
    if left.button("Export this point", type="primary"):
        ui.jump_to_step(path, rec.step)
        st.switch_page("pages/5_Export.py")
    if right.button("Inspect it on Explore"):
        ui.jump_to_step(path, rec.step)
        st.switch_page("pages/2_Explore.py")

# ---- charts -----------------------------------------------------------------------------------
left, right = st.columns(2)
if have_ppl:
    left.plotly_chart(figures.sweep_quality_figure(table, "perplexity", rec.step), key="choose_ppl")
if accuracy_columns:
    right.plotly_chart(figures.sweep_quality_figure(table, "accuracy", rec.step), key="choose_acc")
if have_cost and have_ppl:
    left, right = st.columns(2)
    left.plotly_chart(figures.sweep_cost_figure(table, "prefill_speedup", "wikitext2", rec.step), key="choose_speed")
    right.plotly_chart(figures.sweep_cost_figure(table, "peak_bytes", "wikitext2", rec.step), key="choose_memory")

st.subheader("Every step")
rows = table.to_rows()
for row in rows:
    row["meets all"] = bool(rec.meets[row["step"]])
st.dataframe(rows, hide_index=True, key="choose_table",
             column_config={"param_sparsity": st.column_config.NumberColumn("parameter sparsity", format="percent"),
                            "structural_ratio": st.column_config.NumberColumn("structural ratio", format="percent")})
notes = [f"**{c}**: {label}" for c, label in table.labels.items()]
if table.cost_label:
    notes.append(f"**cost**: {table.cost_label}; ratios are to the dense model measured in the same process")
st.caption(" · ".join(notes))
