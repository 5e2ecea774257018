"""What the Explore page's "Why was it removed?" views cost, on the 30-layer embedded-model example.

**On the server** (target <= 150 ms each): a structure's history (``explain.structure_history``, its figure,
serialized as the page's chart does with ``plotly.io.to_json``) for structures spread over the model, uncached;
the scores a step ranked (``explain.step_scores`` and its figure) at every step; rank stability once.

**Attention** (target <= 2 s the first time): a 40-token text on the embedded model, one eager forward of the dense
model and one of a step's masked copy (the model load itself is reported apart: the page keeps it loaded).

**In the browser** (``--browser``; target <= 500 ms): ``streamlit run app.py``, Explore in headless Chromium, a head
cell clicked, timed from the click until the history chart names the clicked head.

    python benchmarks/bench_explain.py
    python benchmarks/bench_explain.py --trajectory cache/examples/gemma3-270m-ppl-iterative --browser
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
DEFAULT = ROOT / "cache" / "examples" / "smollm2-135m-ppl-iterative"
TEXT_40 = (
    "The cat sat on the mat because it was warm, and the dog lay beside it by the fire while the rain kept "
    "falling on the old roof of the quiet house"
)


def ms(fn, *args) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn(*args)
    return 1e3 * (time.perf_counter() - started), out


def spread(samples: list[float]) -> dict:
    return {"median": round(statistics.median(samples), 2), "max": round(max(samples), 2), "n": len(samples)}


def server_times(path: Path, structures: int) -> dict:
    import numpy as np
    import plotly.io

    from gisp_engine.explore import explain, figures
    from gisp_engine.explore.view import TrajectoryView
    from gisp_engine.pruning.trajectory import Trajectory

    load_ms, traj = ms(Trajectory.load, path)
    view = TrajectoryView.from_trajectory(traj)
    rng = np.random.default_rng(0)
    ids = rng.choice(traj.space.size, structures, replace=False)

    def history(sid):
        fig = figures.structure_history_figure(explain.structure_history(traj, int(sid)), view.head_unit)
        return plotly.io.to_json(fig, validate=False)

    def distribution(step):
        return plotly.io.to_json(figures.score_distribution_figure(explain.step_scores(traj, step)), validate=False)

    def stability():
        return plotly.io.to_json(
            figures.rank_stability_figure(explain.rank_stability(traj), view.param_sparsity), validate=False
        )

    history(ids[0]), distribution(1), stability()  # plotly's first figure of a kind pays its imports
    return {
        "trajectory_load_ms": round(load_ms, 1),
        "history_ms": spread([ms(history, sid)[0] for sid in ids]),
        "distribution_ms": spread([ms(distribution, t)[0] for t in range(1, traj.num_steps + 1)]),
        "rank_stability_ms": spread([ms(stability)[0] for _ in range(3)]),
    }


def attention_times(path: Path) -> dict:
    import torch

    from gisp_engine.explore import explain
    from gisp_engine.model.loading import load_model
    from gisp_engine.pruning.subnetwork import recorded_model
    from gisp_engine.pruning.trajectory import Trajectory

    traj = Trajectory.load(path)
    load_s, loaded = ms(load_model, recorded_model(traj), "cpu", "float32")
    tokens = len(explain.attention_tokens(loaded, TEXT_40)[0])
    dense_ms, _ = ms(explain.attention_patterns, loaded, TEXT_40)
    step = traj.num_steps // 2
    step_ms, _ = ms(explain.attention_patterns, loaded, TEXT_40, traj, step)
    return {
        "model_load_ms": round(load_s),
        "tokens": tokens,
        "threads": torch.get_num_threads(),
        "dense_first_ms": round(dense_ms),
        f"step_{step}_first_ms": round(step_ms),
    }


def browser_times(path: Path, clicks: int) -> dict:
    """Click head cells of the Explore page in Chromium; ms from the click to the history chart naming the head."""
    import tempfile

    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT / "tests"))
    from browsing import CHROMIUM, CHROMIUM_ARGS, PLOTS, serve

    title = (
        f"(start) => {{ const p = ({PLOTS})().find(p => p.layout && p.layout.title && "
        "String(p.layout.title.text).startsWith(start)); return p ? String(p.layout.title.text) : null; }"
    )
    cache = Path(tempfile.mkdtemp(prefix="bench-explain-"))
    (cache / "models").symlink_to(ROOT / "cache" / "models")
    times = []
    with serve(cache, cache / "streamlit.log", "--server.fileWatcherType", "none") as (url, _):
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            # tall enough for the heatmap and the history below it to be in view (a chart out of view redraws only
            # when scrolled to)
            page = browser.new_page(viewport={"width": 1600, "height": 3000})
            page.goto(f"{url}/Explore")
            page.wait_for_function(f"({PLOTS})().length >= 4", timeout=180_000)
            if path.resolve() != DEFAULT.resolve():
                page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
                page.keyboard.type(path.name)
                page.keyboard.press("Enter")
            page.wait_for_function(title, arg="History of", timeout=120_000)
            for i in range(clicks + 1):
                heads = next(
                    f
                    for f in page.frames
                    if f.evaluate(
                        "() => { const p = document.querySelector('.js-plotly-plot'); "
                        "return !!p && String(p.layout.title.text).startsWith('Attention heads'); }"
                    )
                )
                layer, unit = 3 + i % 20, i % 3
                xy = heads.evaluate(f"""() => {{ const fl = document.querySelector('.js-plotly-plot')._fullLayout;
                    return [fl.xaxis.l2p({unit}) + fl.margin.l, fl.yaxis.l2p({layer}) + fl.margin.t]; }}""")
                box = heads.frame_element().bounding_box()
                started = time.perf_counter()
                page.mouse.click(box["x"] + xy[0], box["y"] + xy[1])
                page.wait_for_function(
                    f"(want) => {{ const t = ({title})('History of'); return t && t.includes(want); }}",
                    arg=f"layer {layer} · ",
                    timeout=60_000,
                )
                if i:  # the first is a warm-up
                    times.append(1e3 * (time.perf_counter() - started))
            browser.close()
    return {"click_to_history_ms": spread(times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectory", type=Path, default=DEFAULT)
    parser.add_argument("--structures", type=int, default=50)
    parser.add_argument("--no-attention", action="store_true")
    parser.add_argument("--browser", action="store_true", help="also time clicks in Chromium")
    parser.add_argument("--clicks", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "bench_explain.json")
    args = parser.parse_args()
    result = {
        "benchmark": "explore: why was it removed",
        "trajectory": str(args.trajectory),
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version()},
        "server": server_times(args.trajectory, args.structures),
    }
    if not args.no_attention:
        result["attention"] = attention_times(args.trajectory)
    if args.browser:
        result["browser"] = browser_times(args.trajectory, args.clicks)
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
