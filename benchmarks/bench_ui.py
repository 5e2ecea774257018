"""Server time of a slider move on the Explore page, for the 30-layer embedded-model example.

A move reruns the page's fragment: threshold the prepared trajectory at the new step
(``TrajectoryView.at``), build the four plotly figures, and serialize them to JSON the way
``st.plotly_chart`` does (``plotly.io.to_json``). This script times exactly those calls on every
step of the example, after the one-time preparation the page caches. Target: <= 150 ms.

It also opens the real page in Streamlit's ``AppTest`` and reads the server time the page
itself reports for each move (its fragment from start to end, Streamlit's element calls
included); that figure is printed beside the first, as a check on what the first leaves out.

    python benchmarks/bench_ui.py                       # the committed example
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
sys.path.insert(0, str(ROOT))

TARGET_MS = 150.0
DEFAULT = ROOT / "cache" / "examples" / "smollm2-135m-ppl-iterative"


def move(view, step: int, hover, evaluations, channel_layout: str = "sorted") -> dict[str, float]:
    """One slider move as the page does it; returns milliseconds per part."""
    import pandas as pd
    import plotly.io

    from gisp_engine import figures

    times = {}
    t0 = time.perf_counter()
    at = view.at(step)
    t1 = time.perf_counter()
    figs = [
        figures.head_survival_figure(view, at, hover),
        (figures.channel_survival_figure(view, at) if channel_layout == "sorted"
         else figures.channel_bins_figure(view, at)),
        figures.layer_fraction_figure(view, at),
        figures.trajectory_curve_figure(view, step, evaluations),
    ]
    pd.DataFrame(view.layer_table(step))
    t2 = time.perf_counter()
    # what st.plotly_chart does with a figure: to_dict (plotly.tools.return_figure_from_figure_or_data), to_json
    sizes = [len(plotly.io.to_json(f.to_dict(), validate=False)) for f in figs]
    t3 = time.perf_counter()
    times.update(threshold=(t1 - t0) * 1e3, figures=(t2 - t1) * 1e3, serialize=(t3 - t2) * 1e3,
                 total=(t3 - t0) * 1e3, bytes=float(sum(sizes)))
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectory", default=str(DEFAULT))
    parser.add_argument("--repeats", type=int, default=3, help="passes over all steps")
    parser.add_argument("--no-page", action="store_true", help="skip the measurement through the real page")
    args = parser.parse_args()

    from gisp_engine import figures
    from gisp_engine.checks import load_evaluations
    from gisp_engine.explore import TrajectoryView, load_trajectory

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
        return {k: {"median": statistics.median(s[k] for s in samples), "max": max(s[k] for s in samples)}
                for k in samples[0]}

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

    print(f"Explore slider move, {view.num_layers} layers, {traj.space.size} structures, {traj.num_steps} steps "
          f"({len(rows['sorted'])} moves per channel layout)")
    print(f"one-time: load {result['load_ms']:.0f} ms, prepare {result['prepare_once_ms']:.0f} ms (cached by the page)")
    print(f"{'channels':<9} {'threshold':>10} {'figures':>9} {'serialize':>10} {'total':>8} {'max':>8} {'payload':>9}")
    for layout in ("sorted", "grouped"):
        s = result[f"{layout}_channels"]
        print(f"{layout:<9} {s['threshold']['median']:>8.2f}ms {s['figures']['median']:>7.1f}ms "
              f"{s['serialize']['median']:>8.1f}ms {s['total']['median']:>6.1f}ms {s['total']['max']:>6.1f}ms "
              f"{s['bytes']['median'] / 1e6:>7.2f}MB")
    if "page_reported_ms" in result:
        p = result["page_reported_ms"]
        print(f"the page itself (AppTest, Streamlit element calls included): median {p['median']:.0f} ms, "
              f"max {p['max']:.0f} ms over {p['moves']} moves")
    print(f"server time per slider move (median, the larger of the two): {worst:.1f} ms (target <= {TARGET_MS:.0f} ms): "
          f"{'met' if result['meets_target'] else 'NOT met'}")
    out = ROOT / "benchmarks" / "results" / "bench_ui.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
