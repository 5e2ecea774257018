"""In Chromium: a click on a head cell of the Explore heatmap opens that head's history (the chart component posts
the clicked point; the page reruns and draws the history of the structure clicked); a chart below the fold waits
for the user to scroll to it before it redraws, and a click brings the history into view."""

from __future__ import annotations

from browsing import PLOTS, ROOT, serve

from gisp_engine import Trajectory

TITLE = (
    f"(start) => {{ const p = ({PLOTS})().find(p => p.layout && p.layout.title && "
    "String(p.layout.title.text).startsWith(start)); return p ? String(p.layout.title.text) : null; }"
)
HEADS_FRAME = (
    "() => { const p = document.querySelector('.js-plotly-plot'); "
    "return !!p && String(p.layout.title.text).startsWith('Attention heads'); }"
)


def test_a_click_on_a_head_cell_shows_its_history(browser, isolated_cache, tmp_path):  # noqa: F811
    example = ROOT / "cache" / "examples" / "gemma3-270m-ppl-iterative"  # carries every step's scores
    with serve(isolated_cache, tmp_path / "streamlit.log", "--server.fileWatcherType", "none") as (url, _):
        page = browser.new_page(viewport={"width": 1600, "height": 4000})  # every chart in view: all drawn
        page.goto(f"{url}/Explore")
        page.wait_for_function(f"({PLOTS})().length >= 4", timeout=120_000)
        page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
        page.keyboard.type(example.name)
        page.keyboard.press("Enter")
        # the default example has scores too: wait for the Gemma example's own heatmap (its head count), then its
        # history, before taking the heads frame (the first example's frames go as the page switches)
        traj = Trajectory.load(example)
        heads_total = traj.geometry.num_layers * traj.space.head_units
        page.wait_for_function(
            f"(end) => {{ const t = ({TITLE})('Attention heads'); return !!t && t.endsWith(end); }}",
            arg=f"of {heads_total} kept",
            timeout=120_000,
        )
        page.wait_for_function(TITLE, arg="History of", timeout=120_000)
        page.wait_for_function(
            "document.querySelector('[data-testid=\"stApp\"]').getAttribute('data-test-script-state') === 'notRunning'",
            timeout=60_000,
        )
        heads = next(f for f in page.frames if f.evaluate(HEADS_FRAME))
        layer, unit = 6, 2
        x, y = heads.evaluate(f"""() => {{ const fl = document.querySelector('.js-plotly-plot')._fullLayout;
            return [fl.xaxis.l2p({unit}) + fl.margin.l, fl.yaxis.l2p({layer}) + fl.margin.t]; }}""")
        box = heads.frame_element().bounding_box()
        page.mouse.click(box["x"] + x, box["y"] + y)
        page.wait_for_function(
            f"(want) => {{ const t = ({TITLE})('History of'); return !!t && t.startsWith(want); }}",
            arg=f"History of layer {layer} · query head {unit}:",
            timeout=60_000,
        )
        assert page.locator('[data-testid="stException"]').count() == 0

        # a short window: a slider move redraws the heatmaps at the top, not the step's scores below the fold
        page.set_viewport_size({"width": 1600, "height": 800})
        page.evaluate("window.scrollTo(0, 0)")
        scores_before = page.evaluate(TITLE, "Scores step")
        sparsity = page.locator('[data-testid="stMetricValue"]').first
        sparsity_before = sparsity.inner_text()
        slider = page.locator('[data-testid="stSlider"] input[type="range"]').first
        slider.focus()
        # to the other end: the step the scores chart shows (max(step, 1)) changes either way
        page.keyboard.press("Home" if slider.get_attribute("value") == slider.get_attribute("max") else "End")
        page.wait_for_function(
            "(old) => document.querySelector('[data-testid=\"stMetricValue\"]').innerText !== old",
            arg=sparsity_before,
            timeout=60_000,
        )
        page.wait_for_function(
            "document.querySelector('[data-testid=\"stApp\"]').getAttribute('data-test-script-state') === 'notRunning'",
            timeout=60_000,
        )
        page.wait_for_timeout(500)
        assert page.evaluate(TITLE, "Scores step") == scores_before, "a chart out of view must wait"
        scores_frame = next(
            f
            for f in page.frames
            if f.evaluate(
                "() => { const p = document.querySelector('.js-plotly-plot'); "
                "return !!p && String(p.layout.title.text).startsWith('Scores step'); }"
            )
        )
        scores_frame.frame_element().scroll_into_view_if_needed()
        page.wait_for_function(
            f"(old) => {{ const t = ({TITLE})('Scores step'); return !!t && t !== old; }}",
            arg=scores_before,
            timeout=30_000,
        )

        # still in the short window, back at the top: a click on another head cell brings its history into view,
        # where it draws (out of view it would wait)
        page.evaluate("window.scrollTo(0, 0)")
        for container in page.locator('[data-testid="stMain"], section.main').all():
            container.evaluate("e => e.scrollTo(0, 0)")
        layer, unit = 7, 1
        x, y = heads.evaluate(f"""() => {{ const fl = document.querySelector('.js-plotly-plot')._fullLayout;
            return [fl.xaxis.l2p({unit}) + fl.margin.l, fl.yaxis.l2p({layer}) + fl.margin.t]; }}""")
        box = heads.frame_element().bounding_box()
        assert box["y"] + y < 800, "the heatmap cell is in view"
        page.mouse.click(box["x"] + x, box["y"] + y)
        page.wait_for_function(
            f"(want) => {{ const t = ({TITLE})('History of'); return !!t && t.startsWith(want); }}",
            arg=f"History of layer {layer} · query head {unit}:",
            timeout=60_000,
        )
        page.close()
