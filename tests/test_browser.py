"""The explorer in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

The tests start ``streamlit run app.py`` on a free localhost port with an empty cache, so the
pages open on the repository's example trajectory. On Explore the test moves the sparsity slider
with the keyboard and waits for the heatmap to change; on Choose it sets a perplexity constraint
and waits for the recommendation to change. Screenshots go into ``benchmarks/results/``. Without chromium or
playwright it skips, except under
``GISP_REQUIRE_DATA=1`` (CI), where it fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from browsing import PLOTS, ROOT, serve
from needs import require

SCREENSHOT = ROOT / "benchmarks" / "results" / "explore_browser.png"


@pytest.fixture
def served_app(isolated_cache, tmp_path):
    with serve(isolated_cache, tmp_path / "streamlit.log", "--server.fileWatcherType", "none") as (url, _):
        yield url


HEADS_STATE = f"""() => {{
  const plots = ({PLOTS})();
  const heads = plots.find(p => p.layout && p.layout.title && String(p.layout.title.text).includes('Attention heads'));
  if (!heads) return null;
  return {{title: String(heads.layout.title.text), z: JSON.stringify(heads.data[0].z)}};
}}"""

CHANGED = f"(previous) => {{ const s = ({HEADS_STATE})(); return s !== null && s.z !== previous; }}"


def test_explore_in_chromium_slider_redraws_the_heatmap(browser, served_app):
    page = browser.new_page(viewport={"width": 1600, "height": 1500})
    page.goto(f"{served_app}/Explore")
    page.wait_for_function(f"({PLOTS})().length >= 4", timeout=120_000)
    page.wait_for_function(f"({HEADS_STATE})() !== null", timeout=30_000)
    assert page.locator('[data-testid="stException"]').count() == 0
    before = page.evaluate(HEADS_STATE)
    slider = page.locator('[data-testid="stSlider"] input[type="range"]').first
    value_before = int(slider.get_attribute("value"))
    assert value_before > 0

    slider.focus()
    page.keyboard.press("Home")  # to the dense model
    page.wait_for_function(CHANGED, arg=before["z"], timeout=60_000)
    after = page.evaluate(HEADS_STATE)
    assert int(slider.get_attribute("value")) == 0
    assert after["title"] != before["title"]
    assert re.search(r"(\d+) of \1 kept", after["title"]), after["title"]  # the dense model keeps every head
    assert page.locator('[data-testid="stMetricValue"]').first.inner_text() == "0.0%"

    page.keyboard.press("End")  # to the last subnetwork
    page.wait_for_function(CHANGED, arg=after["z"], timeout=60_000)
    assert page.locator('[data-testid="stException"]').count() == 0
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000
    page.close()


RECOMMENDED = """() => {
  const alerts = Array.from(document.querySelectorAll('[data-testid="stAlert"]')).map(a => a.innerText);
  return alerts.find(t => t.includes('Recommended:') || t.includes('No step meets') || t.includes('contradict')
                          || t.includes('Set a constraint')) || null;
}"""
CHANGED_RECOMMENDATION = f"(previous) => {{ const t = ({RECOMMENDED})(); return t !== null && t !== previous; }}"


def test_choose_in_chromium_a_constraint_changes_the_recommendation(browser, served_app):
    page = browser.new_page(viewport={"width": 1600, "height": 1500})
    page.goto(f"{served_app}/Choose")
    # the example's shipped sweep, and no constraint yet: the page asks for one instead of recommending
    page.wait_for_function(f"({RECOMMENDED})() !== null", timeout=90_000)
    assert page.locator('[data-testid="stException"]').count() == 0
    before = page.evaluate(RECOMMENDED)
    assert "Set a constraint" in before and "Recommended:" not in before
    nav = [line.strip() for line in page.locator('[data-testid="stSidebarNav"]').inner_text().split("\n")]
    titles = [t for t in nav if t and t[0].isupper()]  # the icons' ligature names are lower case
    assert titles[:2] == ["Home", "Choose"] and "app" not in nav, nav

    page.get_by_text("multiple of dense", exact=True).click()  # perplexity at most 2x dense (the default)
    page.wait_for_function(CHANGED_RECOMMENDATION, arg=before, timeout=60_000)
    loose = page.evaluate(RECOMMENDED)
    assert "Recommended:" in loose and "x dense" in loose, loose

    ratio = page.get_by_label("Perplexity at most (x dense)")
    ratio.fill("1.5")
    ratio.press("Enter")  # a tighter limit
    page.wait_for_function(CHANGED_RECOMMENDATION, arg=loose, timeout=60_000)
    tight = page.evaluate(RECOMMENDED)
    assert "Recommended:" in tight and "1.5x dense" in tight, tight
    step_loose = int(re.search(r"step (\d+):", loose).group(1))
    step_tight = int(re.search(r"step (\d+):", tight).group(1))
    assert step_tight < step_loose  # a tighter perplexity limit moves the choice towards the dense model
    assert page.locator('[data-testid="stException"]').count() == 0
    page.screenshot(path=str(SCREENSHOT.with_name("choose_browser.png")), full_page=True)
    page.close()


# every text the sidebar navigation shows, from the first paint on
RECORD_NAV = """document.addEventListener('DOMContentLoaded', () => {
  window.__navs = [];
  const note = () => {
    const nav = document.querySelector('[data-testid="stSidebarNav"]');
    const text = nav ? nav.innerText.split('\\n').map(t => t.trim()).filter(Boolean).join('|') : null;
    if (text && window.__navs[window.__navs.length - 1] !== text) window.__navs.push(text);
  };
  new MutationObserver(note).observe(document, {subtree: true, childList: true, characterData: true});
  note();
})"""


def test_a_cold_first_load_never_lists_the_page_files(browser, served_app):
    """A fresh server's first page, opened by its URL, shows app.py's navigation only: never "app", "Learn"."""
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.add_init_script(RECORD_NAV)
    page.goto(f"{served_app}/Learn")
    page.wait_for_function("(window.__navs || []).some(t => t.includes('How GISP works'))", timeout=120_000)
    page.wait_for_selector("h1", timeout=60_000)
    shown = page.evaluate("window.__navs")
    titles = [[t for t in nav.split("|") if t[0].isupper()] for nav in shown]  # icon ligature names are lower case
    assert all(
        t[:2] == ["Home", "Choose"] and "app" not in nav.split("|") and "Learn" not in t
        for nav, t in zip(shown, titles)
    ), shown
    page.close()


def _inotify_watched_inodes(pid: int) -> set[int]:
    """Inodes the process (and its threads' shared fds) watches through inotify."""
    inodes = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        with contextlib.suppress(OSError):
            for line in info.read_text().splitlines():
                if line.startswith("inotify wd:"):
                    inodes.add(int(re.search(r"ino:([0-9a-f]+)", line).group(1), 16))
    return inodes


def test_the_file_watcher_leaves_the_cache_alone(browser, isolated_cache, tmp_path):
    """The repository's config polls the app's own files; cache/ is never watched, however much is written there."""
    import tomllib

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["fileWatcherType"] == "poll"
    log_path = tmp_path / "streamlit.log"
    with serve(isolated_cache, log_path) as (url, proc):  # the repository's config, watcher included
        page = browser.new_page(viewport={"width": 1600, "height": 3000})  # every chart in view, so all draw
        page.goto(f"{url}/Explore")
        page.wait_for_function(f"({PLOTS})().length >= 4", timeout=120_000)
        watched = _inotify_watched_inodes(proc.pid)
        assert (ROOT / "cache").stat().st_ino not in watched and ROOT.stat().st_ino not in watched
        burst = ROOT / "cache" / f".watch-test-{os.getpid()}"  # what jobs and sweeps do to cache/, many times over
        burst.mkdir()
        try:
            for i in range(3000):
                (burst / f"{i % 50}.json").write_text(str(i))
            time.sleep(2)
        finally:
            shutil.rmtree(burst)
        assert page.locator('[data-testid="stException"]').count() == 0
        page.close()
    log = log_path.read_text()
    assert "Inotify" not in log and "overflow" not in log.lower(), log[-2000:]


# ---- charts, drawn by plotly.js ------------------------------------------------------------------
CHART_BOXES = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => {
  const box = el => { if (!el) return null; const r = el.getBoundingClientRect();
                      return r.width && r.height ? [r.left, r.top, r.right, r.bottom] : null; };
  const all = sel => Array.from(gd.querySelectorAll(sel)).map(box).filter(Boolean);
  return {id: gd.id, title: box(gd.querySelector('.gtitle')), legend: box(gd.querySelector('.legend .bg')),
          xtitles: all('.g-xtitle text'), plots: all('.nsewdrag'),
          logTicks: Object.keys(gd._fullLayout).filter(k => k.startsWith('yaxis') && gd._fullLayout[k].type === 'log')
            .map(k => Array.from(gd.querySelectorAll('.' + gd._fullLayout[k]._id + 'tick text'))
                        .map(t => t.textContent))};
})"""


def _overlap(a, b) -> bool:
    return bool(a and b and a[0] < b[2] - 1 and b[0] < a[2] - 1 and a[1] < b[3] - 1 and b[1] < a[3] - 1)


def test_charts_keep_titles_clear_and_label_log_axes_in_full(browser, tmp_path):
    """The examples' charts at half a wide page: no legend over a title, an axis title or the plot; log axes
    labelled "50, 100, 200", never a bare "2" or "5"."""
    import json

    import plotly
    import plotly.io

    from gisp_engine.choose.table import sweep_table
    from gisp_engine.evaluation.checks import load_evaluations
    from gisp_engine.explore import figures
    from gisp_engine.explore.view import TrajectoryView, load_trajectory

    examples = ROOT / "cache" / "examples"
    names = ("smollm2-135m-ppl-iterative", "smollm2-135m-ppl-oneshot", "smollm2-135m-wanda-sp")
    if not all((examples / n / "evaluations.json").is_file() for n in names):
        require("the examples with their sweep results")
    iterative, oneshot, wanda = (load_trajectory(examples / n) for n in names)
    view = TrajectoryView.from_trajectory(iterative)
    tables = {
        "iterative (10 steps)": sweep_table(iterative),
        "one-shot": sweep_table(oneshot),
        "Wanda-sp": sweep_table(wanda),
    }
    charts = {
        "curve": figures.trajectory_curve_figure(view, 5, load_evaluations(iterative)),
        "layers": figures.layer_fraction_figure(view, view.at(5)),
        "quality": figures.sweep_quality_figure(tables["iterative (10 steps)"], "perplexity", 6),
        "compare": figures.compare_quality_figure(tables, "wikitext2", 0.3),
    }
    specs = {k: json.loads(plotly.io.to_json(f)) for k, f in charts.items()}
    script = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    html = tmp_path / "charts.html"
    html.write_text(
        f"<html><head><script src='file://{script}'></script></head><body>"
        + "".join(f"<div id='{k}' style='width:700px'></div>" for k in specs)
        + "<script>"
        + "".join(
            f"Plotly.newPlot('{k}', {json.dumps(v['data'])}, {json.dumps(v['layout'])});" for k, v in specs.items()
        )
        + "</script></body></html>"
    )
    page = browser.new_page(viewport={"width": 760, "height": 1000})
    page.goto(f"file://{html}")
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {len(specs)}")
    for chart in page.evaluate(CHART_BOXES):
        where = chart["id"]
        assert not _overlap(chart["title"], chart["legend"]), f"{where}: the legend covers the title"
        assert not any(_overlap(chart["legend"], box) for box in chart["plots"] + chart["xtitles"]), where
        for axis, labels in zip(
            (k for k, a in specs[where]["layout"].items() if k.startswith("yaxis") and a.get("type") == "log"),
            chart["logTicks"],
        ):
            assert labels and all(t in specs[where]["layout"][axis]["ticktext"] for t in labels), (where, labels)
            assert not {"2", "5"} & set(labels), (where, labels)
    page.screenshot(path=str(SCREENSHOT.with_name("charts_browser.png")), full_page=True)
    page.close()


def test_the_home_table_fits_a_laptop_screen(browser, served_app):
    """At 1280 px with the sidebar open, every column of the Home table is in view (none past the right edge)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(served_app)
    page.wait_for_selector('[data-testid="stDataFrame"] .dvn-scroller', timeout=120_000)
    widths = page.evaluate("""() => { const s = document.querySelector('[data-testid="stDataFrame"] .dvn-scroller');
                                      return [s.scrollWidth, s.clientWidth]; }""")
    assert widths[0] <= widths[1] + 1, f"the table is {widths[0]} px wide in {widths[1]} px: columns are cut off"
    page.close()
