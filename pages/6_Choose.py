"""Choose: sweep a trajectory for quality and cost, set constraints, get the sparsest step that meets them.

Sweeps run in the background (``gisp_engine.jobs.background.submit_sweep``); every point is remembered in the
evaluation store, so the charts fill in as the sweep goes and a reload loses nothing.
"""

import streamlit as st

import explorer_ui as ui
from gisp_engine.choose.recommend import Constraints, recommend
from gisp_engine.choose.sweep import SweepRequest, requested_series
from gisp_engine.choose.table import sweep_table
from gisp_engine.data.text import BOS_POLICIES, BOS_POLICY_HELP
from gisp_engine.evaluation import checks
from gisp_engine.evaluation.cost import CostSpec
from gisp_engine.evaluation.cost_llamacpp import LAYOUTS, RUNTIMES, GGUFCostSpec
from gisp_engine.explore import figures
from gisp_engine.export.gguf import OUTTYPES
from gisp_engine.jobs import background as jobs

ui.page_setup("Choose")
st.title("Choose a deployment sparsity")
st.caption(
    "Every step of a trajectory is one nested subnetwork. Sweep them for quality (and cost), state what the "
    "deployment must meet, and the sparsest step that meets it all is recommended."
)

path, view, traj = ui.picked_trajectory()


# ---- the sweep ----------------------------------------------------------------------------------
DEFAULT_LIMITS = {"wikitext2": 120, "gsm8k": 50}  # windows, problems; every other check: items per task
ITEMS = 100


def _request_slot() -> str:
    return f"sweep_request_{path}"


def _sweep_form() -> None:
    available = checks.available_checks()
    remembered = {r["task"] for r in ui.evaluations(path)}
    tasks = st.multiselect(
        "Checks",
        list(available),
        default=[] if "wikitext2" in remembered else ["wikitext2"],
        format_func=lambda t: available[t].title,
        key=f"sweep_checks_{path}",
        help="Perplexity, each decision task, cmqa (all seven, with their average), gsm8k. "
        "Each has its own limit below.",
    )
    with st.form("sweep_settings"):
        limits = {}
        columns = st.columns(max(len(tasks), 1) + 1) if tasks else [st]
        for col, task in zip(columns, tasks):
            unit = "windows" if task == "wikitext2" else "problems" if task == "gsm8k" else "items per task"
            limits[task] = col.number_input(
                f"{task}: {unit} (0 = all)",
                min_value=0,
                value=DEFAULT_LIMITS.get(task, ITEMS),
                step=8,
                key=f"sweep_limit_{task}",
            )
        c1, c2, c3 = st.columns(3)
        seq_len = c1.number_input("Window length (wikitext2)", min_value=2, value=128, step=64)
        bos = c2.selectbox(
            "BOS token (wikitext2)",
            BOS_POLICIES,
            help=BOS_POLICY_HELP,
        )
        device = c3.selectbox("Device", ui.DEVICES)
        spec = CostSpec().resolved()
        cost = st.checkbox(
            f"Also measure cost: prefill and decode speed, peak memory, weight bytes (relative to dense; "
            f"interleaved repeats, {spec.threads} threads, as `gisp sweep --cost`)",
            value=False,
            key="sweep_cost",
        )
        c1, c2, c3, c4 = st.columns(4)
        runtime = c1.selectbox(
            "Cost measured in",
            list(RUNTIMES),
            format_func=RUNTIMES.get,
            key="sweep_runtime",
            help="PyTorch: the sliced model, on the device above. llama.cpp: each step's GGUF "
            "(as `gisp export --format gguf` writes it) against the dense GGUF written the "
            "same way, on the CPU (`--runtime llamacpp`)",
        )
        outtype = c2.selectbox(
            "GGUF type (llama.cpp)", OUTTYPES, index=OUTTYPES.index(GGUFCostSpec.outtype), key="sweep_outtype"
        )
        layout = c3.selectbox(
            "GGUF layout (llama.cpp)",
            LAYOUTS,
            key="sweep_layout",
            help="per-layer: llama.cpp's deci, each layer at its own width; uniform: the family's "
            "stock arch, every layer cut to the same width",
        )
        align = c4.number_input(
            "MLP widths a multiple of (llama.cpp; 0 = as pruned)", min_value=0, value=0, step=32, key="sweep_align"
        )
        go = st.form_submit_button("Sweep every step in the background", type="primary")
    if go:
        with ui.guard("Cannot start the sweep: "):
            workload = (
                GGUFCostSpec(outtype=outtype, layout=layout, align=int(align) or None)
                if runtime == "llamacpp"
                else CostSpec()
            )
            request = SweepRequest(
                tasks=tuple(tasks),
                limits=tuple((t, int(n) or None) for t, n in limits.items()),
                seq_len=int(seq_len),
                bos=bos,
                cost=workload if cost else None,
            )
            job = jobs.submit_sweep(traj, request, device=device)
        st.session_state[f"sweep_job_{path}"] = job.key
        st.session_state[_request_slot()] = (request.to_dict(), device)


def _sweep_key() -> str | None:
    """This session's sweep of the trajectory, else the newest one of it, running first (a reload, another tab)."""
    key = st.session_state.get(f"sweep_job_{path}")
    if key is None:
        sweeps = [j for j in jobs.list_jobs(kind="sweep") if j.config.get("trajectory") == path]
        sweeps.sort(key=lambda j: not j.active)  # stable: newest first within each
        key = sweeps[0].key if sweeps else None
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
        ui.job_outcome(
            job,
            f"Sweep finished: {job.total} points in {job.elapsed_s or 0:.0f} s",
            "The sweep",
            "Sweep cancelled: the points it finished are kept; sweep again to continue.",
        )
    if st.session_state.get("sweep_polling") and not job.active:
        st.session_state["sweep_polling"] = False
        st.rerun()  # the last points are in: draw them


with st.expander("Sweep this trajectory", expanded=not ui.evaluations(path)):
    if ui.can_change():
        _sweep_form()
    else:  # a viewer reads the sweeps already made
        ui.viewer_note("A new sweep")
    key = _sweep_key()
    running = bool(key and (job := jobs.status(key)) and job.active)
    st.session_state["sweep_polling"] = running
    if running:
        st.fragment(run_every=1.0)(_sweep_status)()
    else:
        _sweep_status()


def _requested() -> dict[str, str]:
    """The series the user asked for last: this session's sweep request, else the newest sweep of this trajectory."""
    asked = st.session_state.get(_request_slot())
    if asked is None:
        mine = [j for j in jobs.list_jobs(kind="sweep") if j.config.get("trajectory") == path]
        if not mine:
            return {}
        asked = (mine[0].config["request"], mine[0].config.get("device", "auto"))
    with ui.guard("Cannot read the last sweep's settings: "):
        return requested_series(traj, SweepRequest.from_dict(asked[0]), asked[1])


@st.cache_data(max_entries=16, show_spinner=False)
def _table(path: str, stamp: int, evaluations: list[dict], prefer: tuple[tuple[str, str], ...]):
    return sweep_table(ui.load_trajectory(path), evaluations, dict(prefer))


def _series_pickers(table) -> dict[str, str]:
    """One picker per check remembered with several settings; the requested series first."""
    several = {t: alts for t, alts in table.alternatives.items() if len(alts) > 1}
    if not several:
        return dict(table.series)
    chosen = dict(table.series)
    with st.expander(
        f"Settings of the series shown ({len(several)} checks are remembered with several)", expanded=False
    ):
        st.caption(
            "Each check is shown with one set of settings; the one your last sweep asked for is the default. "
            "A series measured with other settings is never mixed in."
        )
        for task, alts in several.items():
            keys = [a.key for a in alts]
            by_key = {a.key: a for a in alts}
            chosen[task] = st.selectbox(
                f"{task}",
                keys,
                index=keys.index(table.series[task]),
                key=f"choose_series_{task}_{path}",
                format_func=lambda k, by_key=by_key: f"{by_key[k].label} · {len(by_key[k].steps)} steps",
            )
    return chosen


first = _table(path, ui.stamp(path), ui.evaluations(path), tuple(sorted(_requested().items())))
if not first.quality and not first.cost:
    st.info("No step of this trajectory is evaluated yet: sweep it above (or evaluate single points on Evaluate).")
    st.stop()
picked = _series_pickers(first)
table = _table(path, ui.stamp(path), ui.evaluations(path), tuple(sorted(picked.items())))

# ---- constraints ------------------------------------------------------------------------------
st.subheader("Constraints")
have_ppl = "wikitext2" in table.quality
accuracy_columns = table.accuracy_columns
have_cost = "prefill_speedup" in table.cost
c1, c2, c3 = st.columns(3)
max_ppl = max_ratio = min_avg = max_mem = min_speed = min_decode = None
task_minimums: list[tuple[str, float]] = []
with c1:
    if have_ppl:
        kind = st.radio(
            "Maximum perplexity", ["none", "absolute", "multiple of dense"], horizontal=True, key="choose_ppl_kind"
        )
        if kind == "absolute":
            max_ppl = st.number_input(
                "Perplexity at most", min_value=0.0, value=round(2 * table.dense("wikitext2"), 1), key="choose_max_ppl"
            )
        elif kind == "multiple of dense":
            max_ratio = st.number_input(
                "Perplexity at most (x dense)", min_value=0.0, value=2.0, step=0.25, key="choose_max_ratio"
            )
with c2:
    if "cmqa" in accuracy_columns:
        value = st.number_input(
            "Minimum average accuracy (%; 0 = none)",
            min_value=0.0,
            max_value=100.0,
            value=0.0,
            step=1.0,
            key="choose_min_avg",
        )
        min_avg = value / 100 if value else None
    per_task = [c for c in accuracy_columns if c != "cmqa"]
    if per_task:
        for task in st.multiselect("Minimum accuracy per task", per_task, key="choose_tasks"):
            value = st.number_input(
                f"{task}: at least (%)",
                min_value=0.0,
                max_value=100.0,
                value=round(100 * table.dense(task) - 5, 1),
                step=1.0,
                key=f"choose_min_{task}",
            )
            task_minimums.append((task, value / 100))
with c3:
    if have_cost:
        mem = st.number_input(
            "Maximum peak memory (MiB; 0 = none)", min_value=0.0, value=0.0, step=16.0, key="choose_max_mem"
        )
        max_mem = mem or None
        speed = st.number_input(
            "Minimum prefill speed-up (x dense; 0 = none)", min_value=0.0, value=0.0, step=0.1, key="choose_min_speed"
        )
        min_speed = speed or None
        decode = st.number_input(
            "Minimum decode speed-up (x dense; 0 = none)", min_value=0.0, value=0.0, step=0.1, key="choose_min_decode"
        )
        min_decode = decode or None
        st.caption(
            f"In the {table.cost_label} (pick another series above, if remembered). A speed-up counts as met "
            "only when every repeat's ratio meets it."
        )
    else:
        st.caption("Sweep with cost to constrain memory and speed.")

with ui.guard("These constraints cannot be used: "):
    constraints = Constraints(
        max_perplexity=max_ppl,
        max_perplexity_ratio=max_ratio,
        min_average_accuracy=min_avg,
        min_task_accuracy=tuple(task_minimums),
        max_memory_mb=max_mem,
        min_prefill_speedup=min_speed,
        min_decode_speedup=min_decode,
    )
    rec = recommend(table, constraints)

if constraints.empty:
    st.info(rec.text)
elif rec.step is None:
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
if not constraints.empty:  # the series behind the recommendation, with their settings
    basis = [table.labels["wikitext2"]] if max_ppl or max_ratio else []
    basis += [table.labels["cmqa"]] if min_avg else []
    basis += [table.labels[t] for t, _ in task_minimums]
    basis += [table.cost_label] if max_mem or min_speed or min_decode else []
    st.caption("Measured with: " + "; ".join(basis))

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
st.dataframe(
    rows,
    hide_index=True,
    key="choose_table",
    column_config={
        "param_sparsity": st.column_config.NumberColumn("parameter sparsity", format="percent"),
        "structural_ratio": st.column_config.NumberColumn("structural ratio", format="percent"),
    },
)
notes = [f"**{c}**: {label}" for c, label in table.labels.items()]
if table.cost_label:
    notes.append(
        f"**cost**: {table.cost_label}; speed-ups are the median of each repeat's ratio to the dense model "
        "measured in the same process, with the lowest and highest (_low, _high)"
    )
st.caption(" · ".join(notes))
