"""GISP Explorer: home page (placeholder until the explorer issue lands)."""

import streamlit as st

from gisp_engine import settings
from gisp_engine.cache import list_cached
from gisp_engine.models import embedded_model_ready

st.set_page_config(page_title="GISP Explorer", layout="wide")
st.title("GISP Explorer")
st.caption("Global Iterative Structured Pruning: prune once, deploy many.")
st.write(f"Default model **{settings.DEFAULT_MODEL}**: {'ready' if embedded_model_ready() else 'not converted yet'}")
rows = list_cached()
st.write(f"{len(rows)} trajectories in the cache.")
if rows:
    st.dataframe(rows)
