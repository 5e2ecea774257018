"""What a user waits for after moving the Explore slider, for the 30-layer embedded-model example.

**In the browser** (the figure that counts; target <= 500 ms): ``streamlit run app.py`` on a free port,
Explore opened in headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright), the
slider moved with the keyboard, one step at a time back and forth. Each move is timed from the key
press (a ``keydown`` listener in the page) until the page is idle: Streamlit's script state back to
``notRunning`` after a run, and no DOM change for ``--quiet-ms`` (the time of the last change is
the end, so the quiet window itself is not counted). Median and spread over ``--moves`` moves,
after two warm-up moves; the machine's load average is printed with them (a shared machine's
figures are not a quiet machine's).

**On the server** (what the page's fragment costs; target <= 150 ms): a move thresholds the prepared
trajectory at the new step (``TrajectoryView.at``), builds the four plotly figures and serializes
them as ``st.plotly_chart`` does (``plotly.io.to_json``); this script times those calls on every step,
and reads the server time the real page reports through Streamlit's ``AppTest``.

    python benchmarks/bench_ui.py                       # the committed example
    python benchmarks/bench_ui.py --moves 40 --no-page  # browser and engine only
    python benchmarks/bench_ui.py --trajectory cache/trajectories/<key> --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from browsing import CHROMIUM, CHROMIUM_ARGS, PLOTS, serve  # noqa: E402 (the browser tests' Chromium and server)

TARGET_MS = 150.0  # server time of one move
BROWSER_TARGET_MS = 500.0  # key press to an idle page
DEFAULT = ROOT / "cache" / "examples" / "smollm2-135m-ppl-iterative"


def move(view, step: int, hover, evaluations, channel_layout: str = "sorted") -> dict[str, float]:
    """One slider move as the page does it; returns milliseconds per part."""
    import pandas as pd
    import plotly.io

    from gisp_engine.explore import figures

    times = {}
    t0 = time.perf_counter()
    at = view.at(step)
    t1 = time.perf_counter()
    figs = [
        figures.head_survival_figure(view, at, hover),
        (
            figures.channel_survival_figure(view, at)
            if channel_layout == "sorted"
            else figures.channel_bins_figure(view, at)
        ),
        figures.layer_fraction_figure(view, at),
        figures.trajectory_curve_figure(view, step, evaluations),
    ]
    pd.DataFrame(view.layer_table(step))
    t2 = time.perf_counter()
    # what st.plotly_chart does with a figure: to_dict (plotly.tools.return_figure_from_figure_or_data), to_json
    sizes = [len(plotly.io.to_json(f.to_dict(), validate=False)) for f in figs]
    t3 = time.perf_counter()
    times.update(
        threshold=(t1 - t0) * 1e3,
        figures=(t2 - t1) * 1e3,
        serialize=(t3 - t2) * 1e3,
        total=(t3 - t0) * 1e3,
        bytes=float(sum(sizes)),
    )
    return times


def page_times(path: str, steps: int, repeats: int) -> list[float]:
    """Server time the Explore page reports for each slider move (ms), run through AppTest."""
    import re

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.session_state["selected_trajectory"] = str(Path(path).resolve())
    at.run()
    at.switch_page("pages/2_Explore.py").run()
    out = []
    for _ in range(repeats):
        for step in range(steps + 1):
            at.select_slider[0].set_value(step).run()
            caption = next(c.value for c in at.caption if "Server time" in c.value)
            out.append(float(re.search(r"Server time for this point: (\d+) ms", caption).group(1)))
    return out


# in the page: when the last key went down, when the DOM (the page's or a chart frame's) last changed, when a script
# run was last seen
INSTRUMENT = """() => {
  if (window.__bench) return;
  const b = window.__bench = {key: 0, last: performance.now(), ran: 0};
  const app = () => document.querySelector('[data-testid="stApp"]');
  const options = {subtree: true, childList: true, attributes: true, characterData: true};
  const watched = new WeakSet();
  const watch = (doc) => {
    if (doc && doc.body && !watched.has(doc)) { watched.add(doc); observer.observe(doc.body, options); }
  };
  const frames = () => document.querySelectorAll('iframe')
    .forEach(f => { try { watch(f.contentDocument); } catch (e) {} });
  const observer = new MutationObserver(() => {
    b.last = performance.now();
    if (app() && app().getAttribute('data-test-script-state') === 'running') b.ran = b.last;
    frames();
  });
  document.addEventListener('keydown', () => { b.key = performance.now(); b.ran = 0; }, true);
  watch(document);
  frames();
}"""
IDLE = """(quiet) => {
  const b = window.__bench, app = document.querySelector('[data-testid="stApp"]');
  return b.ran > b.key && app.getAttribute('data-test-script-state') === 'notRunning'
         && performance.now() - b.last >= quiet;
}"""
SERVER_TIME = """() => { const c = Array.from(document.querySelectorAll('[data-testid="stCaptionContainer"]'))
  .map(e => e.innerText).find(t => t.includes('Server time for this point'));
  const m = c && c.match(/Server time for this point: (\\d+) ms/); return m ? Number(m[1]) : null; }"""


def browser_times(path: str, moves: int, quiet_ms: float, plain_charts: bool = False) -> dict:
    """Key press to idle page (ms) for ``moves`` slider moves on Explore in Chromium, and the server time shown."""
    import shutil
    import tempfile

    from playwright.sync_api import sync_playwright

    if not CHROMIUM.is_file():
        raise SystemExit(f"no chromium at {CHROMIUM} (apt-get install chromium; or --no-browser)")
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        source = Path(path).resolve()
        if source.parent != (ROOT / "cache" / "examples").resolve():  # the examples are listed anyway
            shutil.copytree(source, cache / "trajectories" / source.name)
        log = Path(tmp) / "streamlit.log"
        plain = {"GISP_PLAIN_CHARTS": "1" if plain_charts else ""}
        with serve(cache, log, "--server.fileWatcherType", "none", env=plain) as (url, proc):
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1600, "height": 1200})
                page.goto(f"{url}/Explore")
                page.wait_for_function(f"({PLOTS})().length >= 4", timeout=180_000)
                picker = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"] input').first
                if source.name not in picker.input_value():  # a fresh session opens on the first example
                    picker.click()
                    picker.fill(source.name)
                    page.get_by_role("option").filter(has_text=source.name).first.click()
                    page.wait_for_function(
                        '(name) => document.querySelector(\'[data-testid="stSidebar"] '
                        '[data-testid="stSelectbox"] input\').value.includes(name)',
                        arg=source.name,
                        timeout=60_000,
                    )
                    page.wait_for_function(
                        "document.querySelector('[data-testid=\"stApp\"]')"
                        ".getAttribute('data-test-script-state') === 'notRunning'",
                        timeout=120_000,
                    )
                page.evaluate(INSTRUMENT)
                cdp = page.context.new_cdp_session(page)
                cdp.send("Performance.enable")
                slider = page.locator('[data-testid="stSlider"] input[type="range"]').first
                low, high = int(slider.get_attribute("min")), int(slider.get_attribute("max"))
                slider.focus()
                page.keyboard.press("Home")
                page.wait_for_function(IDLE, arg=quiet_ms, timeout=120_000)
                idle, server, browser_cpu, server_cpu, chromium_cpu, step = [], [], [], [], [], low
                sweep = ["ArrowRight"] * (high - low) + ["ArrowLeft"] * (high - low)  # every step, up and down
                for i in range(moves + 2):
                    key = sweep[i % len(sweep)]
                    step += 1 if key == "ArrowRight" else -1
                    tasks, cpu, chrome = _task_seconds(cdp), _cpu_seconds(proc.pid), _chromium_cpu_seconds()
                    page.keyboard.press(key)
                    page.wait_for_function(IDLE, arg=quiet_ms, timeout=120_000)
                    assert int(slider.get_attribute("value")) == step, "the slider did not move"
                    if i >= 2:  # two warm-up moves
                        idle.append(page.evaluate("window.__bench.last - window.__bench.key"))
                        server.append(page.evaluate(SERVER_TIME))
                        browser_cpu.append(1e3 * (_task_seconds(cdp) - tasks))
                        server_cpu.append(1e3 * (_cpu_seconds(proc.pid) - cpu))
                        chromium_cpu.append(1e3 * (_chromium_cpu_seconds() - chrome))
                browser.close()
    return {
        "idle_ms": idle,
        "server_ms": [s for s in server if s is not None],
        "browser_cpu_ms": browser_cpu,
        "server_cpu_ms": server_cpu,
        "chromium_cpu_ms": chromium_cpu,
    }


def _task_seconds(cdp) -> float:
    """CPU time the page's main thread has spent in tasks (script, style, layout, paint), from Chrome's metrics."""
    return next(m["value"] for m in cdp.send("Performance.getMetrics")["metrics"] if m["name"] == "TaskDuration")


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process, all its threads (the Streamlit server)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _chromium_cpu_seconds() -> float:
    """CPU time of every Chromium process this script started (browser, renderer, GPU, utility): what the page costs
    whatever else the machine is doing, unlike a wall-clock time on a shared machine."""
    children: dict[int, list[int]] = {}
    names: dict[int, bytes] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                names[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    total, todo = 0.0, list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        if b"chrom" in names.get(pid, b"") or b"headless_shell" in names.get(pid, b""):
            try:
                total += _cpu_seconds(pid)
            except OSError:
                pass
    return total


def spread(samples: list[float]) -> dict:
    q = statistics.quantiles(samples, n=10) if len(samples) >= 2 else [samples[0]] * 9
    return {
        "median": statistics.median(samples),
        "p10": q[0],
        "p90": q[-1],
        "min": min(samples),
        "max": max(samples),
        "n": len(samples),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectory", default=str(DEFAULT))
    parser.add_argument("--repeats", type=int, default=3, help="passes over all steps")
    parser.add_argument("--no-page", action="store_true", help="skip the measurement through AppTest")
    parser.add_argument("--no-browser", action="store_true", help="skip the measurement in Chromium")
    parser.add_argument("--moves", type=int, default=20, help="slider moves timed in the browser")
    parser.add_argument(
        "--plain-charts",
        action="store_true",
        help="the app's charts as st.plotly_chart (GISP_PLAIN_CHARTS=1), to compare with the default",
    )
    parser.add_argument("--quiet-ms", type=float, default=300.0, help="no DOM change this long: the page is idle")
    args = parser.parse_args()
    load_before = os.getloadavg()

    from gisp_engine.evaluation.checks import load_evaluations
    from gisp_engine.explore import figures
    from gisp_engine.explore.view import TrajectoryView, load_trajectory

    t0 = time.perf_counter()
    traj = load_trajectory(args.trajectory)
    t1 = time.perf_counter()
    view = TrajectoryView.from_trajectory(traj)
    hover = figures.head_hover(view)
    t2 = time.perf_counter()
    evaluations = load_evaluations(traj)

    move(view, 0, hover, evaluations)  # warm up plotly's validators and imports
    rows = {"sorted": [], "grouped": []}
    for _ in range(args.repeats):
        for layout in rows:
            for step in range(traj.num_steps + 1):
                rows[layout].append(move(view, step, hover, evaluations, layout))

    def summary(samples: list[dict]) -> dict:
        return {
            k: {"median": statistics.median(s[k] for s in samples), "max": max(s[k] for s in samples)}
            for k in samples[0]
        }

    result = {
        "benchmark": "explore slider move (server time)",
        "trajectory": os.path.relpath(Path(args.trajectory).resolve(), ROOT),
        "layers": view.num_layers,
        "structures": int(traj.space.size),
        "steps": traj.num_steps,
        "load_ms": (t1 - t0) * 1e3,
        "prepare_once_ms": (t2 - t1) * 1e3,
        "moves_per_layout": len(rows["sorted"]),
        "sorted_channels": summary(rows["sorted"]),
        "grouped_channels": summary(rows["grouped"]),
        "target_ms": TARGET_MS,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }
    worst = max(result["sorted_channels"]["total"]["median"], result["grouped_channels"]["total"]["median"])
    if not args.no_page:
        times = page_times(args.trajectory, traj.num_steps, args.repeats)
        result["page_reported_ms"] = {"median": statistics.median(times), "max": max(times), "moves": len(times)}
        worst = max(worst, result["page_reported_ms"]["median"])
    result["median_ms"] = worst
    result["meets_target"] = worst <= TARGET_MS
    if not args.no_browser:
        measured = browser_times(args.trajectory, args.moves, args.quiet_ms, args.plain_charts)
        result["browser"] = {
            "key_to_idle_ms": spread(measured["idle_ms"]),
            "quiet_ms": args.quiet_ms,
            "server_ms_shown": spread(measured["server_ms"]) if measured["server_ms"] else None,
            "browser_main_thread_cpu_ms": spread(measured["browser_cpu_ms"]),
            "server_process_cpu_ms": spread(measured["server_cpu_ms"]),
            "chromium_cpu_ms": spread(measured["chromium_cpu_ms"]),
            "target_ms": BROWSER_TARGET_MS,
            "chromium": str(CHROMIUM),
            "charts": "st.plotly_chart" if args.plain_charts else "explorer_ui.plotly_chart",
        }
        result["browser"]["meets_target"] = result["browser"]["key_to_idle_ms"]["median"] <= BROWSER_TARGET_MS
    result["load_average"] = {"before": load_before, "after": os.getloadavg(), "cpus": os.cpu_count()}

    print(
        f"Explore slider move, {view.num_layers} layers, {traj.space.size} structures, {traj.num_steps} steps "
        f"({len(rows['sorted'])} moves per channel layout)"
    )
    print(f"one-time: load {result['load_ms']:.0f} ms, prepare {result['prepare_once_ms']:.0f} ms (cached by the page)")
    print(f"{'channels':<9} {'threshold':>10} {'figures':>9} {'serialize':>10} {'total':>8} {'max':>8} {'payload':>9}")
    for layout in ("sorted", "grouped"):
        s = result[f"{layout}_channels"]
        print(
            f"{layout:<9} {s['threshold']['median']:>8.2f}ms {s['figures']['median']:>7.1f}ms "
            f"{s['serialize']['median']:>8.1f}ms {s['total']['median']:>6.1f}ms {s['total']['max']:>6.1f}ms "
            f"{s['bytes']['median'] / 1e6:>7.2f}MB"
        )
    if "page_reported_ms" in result:
        p = result["page_reported_ms"]
        print(
            f"the page itself (AppTest, Streamlit element calls included): median {p['median']:.0f} ms, "
            f"max {p['max']:.0f} ms over {p['moves']} moves"
        )
    print(
        f"server time per slider move (median, the larger of the two): {worst:.1f} ms (target <= {TARGET_MS:.0f} ms): "
        f"{'met' if result['meets_target'] else 'NOT met'}"
    )
    if "browser" in result:
        b = result["browser"]["key_to_idle_ms"]
        print(
            f"in Chromium, key press to idle page: median {b['median']:.0f} ms "
            f"(p10 {b['p10']:.0f}, p90 {b['p90']:.0f}, "
            f"min {b['min']:.0f}, max {b['max']:.0f}; {b['n']} moves; quiet window {args.quiet_ms:.0f} ms), "
            f"target <= {BROWSER_TARGET_MS:.0f} ms: {'met' if result['browser']['meets_target'] else 'NOT met'}"
        )
        shown = result["browser"]["server_ms_shown"]
        if shown:
            print(
                f"  server time the page showed for those moves: median {shown['median']:.0f} ms, "
                f"max {shown['max']:.0f} ms"
            )
        tasks, cpu = result["browser"]["browser_main_thread_cpu_ms"], result["browser"]["server_process_cpu_ms"]
        chrome = result["browser"]["chromium_cpu_ms"]
        print(
            f"  per move: Chromium CPU median {chrome['median']:.0f} ms (p90 {chrome['p90']:.0f}), server process CPU "
            f"median {cpu['median']:.0f} ms (p90 {cpu['p90']:.0f}); the page's main thread was busy "
            f"{tasks['median']:.0f} ms (wall clock)"
        )
    load = result["load_average"]
    print(
        f"load average {load['before'][0]:.1f} before, {load['after'][0]:.1f} after, on {load['cpus']} CPUs"
        f"{'' if load['before'][0] < 0.5 * load['cpus'] else ' (a busy machine: not a quiet-machine figure)'}"
    )
    out = ROOT / "benchmarks" / "results" / f"bench_ui{'_plain_charts' if args.plain_charts else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
