"""GISP Explorer: ``streamlit run app.py`` (``make app``). The pages are in ``pages/``; this file names them.

``st.navigation`` gives the sidebar its order and titles ("Home", not the file name).
"""

import streamlit as st

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

# Before anything slow (the engine's imports take seconds on a cold start). .streamlit/config.toml hides the
# sidebar navigation, so that a fresh server's first page never lists the pages/ files ("app", "Learn"); this
# navigation is the one to show.
st.set_option("client.showSidebarNavigation", True)
page = st.navigation(PAGES)

import explorer_ui as ui  # noqa: E402

with ui.navigating():
    page.run()
