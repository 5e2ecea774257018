"""GISP Explorer, home page: what is in the cache, the state of the default model, where to go next.

Shown by ``app.py`` (``streamlit run app.py``, ``make app``), which lists every page in ``pages/``.
"""

import datetime as _dt

import pandas as pd
import streamlit as st

import explorer_ui as ui
from gisp_engine import jobs, settings
from gisp_engine.models import embedded_model_ready, prepare_embedded_model

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
        if st.button("Convert the embedded model now (about a minute)"):
            with ui.guard("Could not convert the model: "), st.spinner("Converting the GGUF weights…"):
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

    table = pd.DataFrame(
        {
            "source": [r["source"] for r in rows],
            "name": [r["name"] for r in rows],
            "model": [r["model"] for r in rows],
            "method": [r.get("method", "gisp") for r in rows],
            "objective": [r["objective"] for r in rows],
            "steps": [r["steps"] for r in rows],
            "max structural ratio": [r["max_structural_ratio"] for r in rows],
            "max parameter sparsity": [r["max_param_sparsity"] for r in rows],
            "created (UTC)": [_when(r.get("created")) for r in rows],
            "size (kB)": [round(r["size_bytes"] / 1024) for r in rows],
        }
    )
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "max structural ratio": st.column_config.NumberColumn(format="percent"),
            "max parameter sparsity": st.column_config.NumberColumn(format="percent"),
        },
    )
    st.caption(
        "Structural ratio: fraction of heads and channels removed. Parameter sparsity: fraction of the decoder's "
        "linear weights removed (what papers report). Examples ship with the repository; the cache holds your runs."
    )

# ---- housekeeping ----------------------------------------------------------------------------
with ui.guard("Cannot look at the cache: "):
    from gisp_engine.housekeeping import apply_cleanup, human_bytes, plan_cleanup

    cleanup = plan_cleanup(finished_jobs=True)
if cleanup.items:
    left, right = st.columns([3, 1])
    left.caption(f"Cleanup: {len(cleanup.items)} finished background jobs and unfinished writes hold "
                 f"{human_bytes(cleanup.bytes)} (`gisp cache prune --jobs`; `gisp cache rm KEY` removes a trajectory).")
    if right.button("Clean up", key="home_cleanup"):
        with ui.guard("Cleanup failed: "):
            apply_cleanup(cleanup)
        st.rerun()

# ---- where next ------------------------------------------------------------------------------
st.subheader("Where next")
st.page_link("pages/6_Choose.py", label="Choose a deployment sparsity: quality and cost of every step, a recommendation",
             icon=":material/target:")
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
