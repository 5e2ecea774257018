"""In Chromium: a click on a head cell of the Explore heatmap opens that head's history (the chart component posts
the clicked point; the page reruns and draws the history of the structure clicked)."""

from __future__ import annotations

from test_browser import PLOTS, ROOT, browser, serve  # noqa: F401 (browser: the module's Chromium fixture)

TITLE = (f"(start) => {{ const p = ({PLOTS})().find(p => p.layout && p.layout.title && "
         "String(p.layout.title.text).startsWith(start)); return p ? String(p.layout.title.text) : null; }")
HEADS_FRAME = ("() => { const p = document.querySelector('.js-plotly-plot'); "
               "return !!p && String(p.layout.title.text).startsWith('Attention heads'); }")


def test_a_click_on_a_head_cell_shows_its_history(browser, isolated_cache, tmp_path):  # noqa: F811
    example = ROOT / "cache" / "examples" / "gemma3-270m-ppl-iterative"  # carries every step's scores
    with serve(isolated_cache, tmp_path / "streamlit.log", "--server.fileWatcherType", "none") as (url, _):
        page = browser.new_page(viewport={"width": 1600, "height": 1500})
        page.goto(f"{url}/Explore")
        page.wait_for_function(f"({PLOTS})().length >= 4", timeout=120_000)
        page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
        page.keyboard.type(example.name)
        page.keyboard.press("Enter")
        page.wait_for_function(TITLE, arg="History of", timeout=120_000)
        heads = next(f for f in page.frames if f.evaluate(HEADS_FRAME))
        layer, unit = 6, 2
        x, y = heads.evaluate(f"""() => {{ const fl = document.querySelector('.js-plotly-plot')._fullLayout;
            return [fl.xaxis.l2p({unit}) + fl.margin.l, fl.yaxis.l2p({layer}) + fl.margin.t]; }}""")
        box = heads.frame_element().bounding_box()
        page.mouse.click(box["x"] + x, box["y"] + y)
        page.wait_for_function(f"(want) => {{ const t = ({TITLE})('History of'); return !!t && t.startsWith(want); }}",
                               arg=f"History of layer {layer} · query head {unit}:", timeout=60_000)
        assert page.locator('[data-testid="stException"]').count() == 0
        page.close()
