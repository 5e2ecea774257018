"""GISP Explorer, home page: what is in the cache, the state of the default model, where to go next.

Shown by ``app.py`` (``streamlit run app.py``, ``make app``), which lists every page in ``pages/``.
"""

import datetime as _dt
from pathlib import Path

import pandas as pd
import streamlit as st

import explorer_ui as ui
from gisp_engine.core import serving, settings
from gisp_engine.jobs import background as jobs
from gisp_engine.jobs.housekeeping import human_bytes
from gisp_engine.model.loading import embedded_model_ready, prepare_embedded_model

ui.page_setup("Home")
st.title("GISP Explorer")
st.caption(
    "Global Iterative Structured Pruning: attention heads and MLP channels of every layer compete in one "
    "ranking, a little is removed at each step, and the steps form nested subnetworks (prune once, deploy many)."
)

# ---- the default model -----------------------------------------------------------------------
left, right = st.columns([3, 2])
with left:
    st.subheader("Default model")
    if embedded_model_ready():
        st.success(f"**{settings.DEFAULT_MODEL}** (SmolLM2-135M, 30 layers) is converted and ready.")
    else:
        st.warning(
            f"**{settings.DEFAULT_MODEL}** is not converted yet. The examples below can be explored without it; "
            "runs, evaluations and exports need it (`gisp model prepare`, or the button)."
        )
        if ui.can_change() and st.button("Convert the embedded model now (about a minute)"):
            with ui.guard("Could not convert the model: "), st.spinner("Converting the GGUF weights…"):
                serving.require_changes("converting the model")
            prepare_embedded_model()
            st.rerun()
with right:
    st.subheader("Runs in the background")
    active = jobs.list_jobs(active_only=True)
    if active:
        for job in active:
            unit = "points" if job.kind == "sweep" else "steps"
            st.write(f"`{job.key}` ({job.kind}): {job.state}, {job.step} of {job.total} {unit}")
        st.page_link("pages/1_Run.py", label="Follow them on the Run page", icon=":material/play_arrow:")
    else:
        st.write("None.")

# ---- what is cached --------------------------------------------------------------------------
st.subheader("Trajectories")
rows = ui.trajectory_rows()
if not rows:
    st.info("Nothing to explore yet: start a run on the Run page.")
else:

    def _when(iso: str | None) -> str:
        try:
            return _dt.datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M") if iso else ""
        except ValueError:
            return iso or ""

    # narrow enough for a laptop screen beside the sidebar (1280 px): no column hidden past the right edge
    table = pd.DataFrame(
        {
            "name": [r["name"] for r in rows],
            "model": [Path(r["model"]).name if r["model"].startswith(("/", ".", "~")) else r["model"] for r in rows],
            "method": [f"{r.get('method', 'gisp')} · {r['objective']}" for r in rows],
            "steps": [r["steps"] for r in rows],
            "params": [100 * r["max_param_sparsity"] for r in rows],
            "structures": [100 * r["max_structural_ratio"] for r in rows],
            "size": [human_bytes(r["size_bytes"]) for r in rows],
            "created": [_when(r.get("created")) for r in rows],
        }
    )
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "method": st.column_config.TextColumn("method · objective"),
            "steps": st.column_config.NumberColumn(width=50),
            "params": st.column_config.NumberColumn(
                "params",
                format="%.1f%%",
                width=65,
                help="maximum parameter sparsity: decoder linear weights removed at the last step",
            ),
            "structures": st.column_config.NumberColumn(
                "structures",
                format="%.0f%%",
                width=78,
                help="maximum structural ratio: heads and channels removed at the last step",
            ),
            "size": st.column_config.TextColumn("size", width=62, help="on disk"),
            "created": st.column_config.TextColumn("created", width=118, help="UTC"),
        },
    )
    st.caption(
        "At the last step: **params**, the parameter sparsity (fraction of the decoder's linear weights removed, what "
        "papers report); **structures**, the structural ratio (fraction of heads and channels removed). Created in "
        "UTC. Named trajectories are the examples that ship with the repository; your runs are named by their "
        "cache key."
    )

# ---- housekeeping ----------------------------------------------------------------------------
with ui.guard("Cannot look at the cache: "):
    from gisp_engine.jobs.housekeeping import apply_cleanup, plan_cleanup

    cleanup = plan_cleanup(finished_jobs=True)
if cleanup.items and ui.can_change():  # a viewer deletes nothing
    left, right = st.columns([3, 1])
    left.caption(
        f"Cleanup: {len(cleanup.items)} finished background jobs and unfinished writes hold "
        f"{human_bytes(cleanup.bytes)} (`gisp cache prune --jobs`; `gisp cache rm KEY` removes a trajectory)."
    )
    if right.button("Clean up", key="home_cleanup"):
        with ui.guard("Cleanup failed: "):
            serving.require_changes("cleaning the cache")
            apply_cleanup(cleanup)
        st.rerun()

# ---- where next ------------------------------------------------------------------------------
st.subheader("Where next")
st.page_link(
    "pages/6_Choose.py",
    label="Choose a deployment sparsity: quality and cost of every step, a recommendation",
    icon=":material/target:",
)
st.page_link("pages/7_Learn.py", label="New to GISP? How it works, in four pictures", icon=":material/school:")
c1, c2, c3 = st.columns(3)
with c1:
    st.page_link("pages/2_Explore.py", label="Explore: which heads and channels go", icon=":material/grid_view:")
    st.page_link("pages/4_Compare.py", label="Compare two trajectories", icon=":material/compare:")
with c2:
    st.page_link("pages/1_Run.py", label="Run: prune in the background", icon=":material/play_arrow:")
    st.page_link("pages/3_Evaluate.py", label="Evaluate: perplexity, accuracy, generation", icon=":material/speed:")
with c3:
    st.page_link("pages/5_Export.py", label="Export the chosen subnetwork", icon=":material/download:")
