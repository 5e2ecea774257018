"""GISP Explorer: ``streamlit run app.py`` (``make app``). The pages are in ``pages/``; this file names them.

``st.navigation`` gives the sidebar its order and titles ("Home", not the file name).
"""

import streamlit as st

import explorer_ui as ui

PAGES = [
    st.Page("pages/0_Home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/6_Choose.py", title="Choose", icon=":material/target:"),
    st.Page("pages/2_Explore.py", title="Explore", icon=":material/grid_view:"),
    st.Page("pages/3_Evaluate.py", title="Evaluate", icon=":material/speed:"),
    st.Page("pages/4_Compare.py", title="Compare", icon=":material/compare:"),
    st.Page("pages/5_Export.py", title="Export", icon=":material/download:"),
    st.Page("pages/1_Run.py", title="Run", icon=":material/play_arrow:"),
    st.Page("pages/7_Learn.py", title="How GISP works", icon=":material/school:"),
]

page = st.navigation(PAGES)
with ui.navigating():
    page.run()
