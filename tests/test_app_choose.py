"""The Choose page (AppTest): a sweep in the background, constraints, the recommended step and its words."""

from __future__ import annotations

import time

import numpy as np
import pytest
from apptest import chart, decode, no_errors, open_page, wait_for
from needs import require

from gisp_engine.choose.recommend import NO_CONSTRAINT, Constraints, describe_step, recommend
from gisp_engine.choose.sweep import SweepRequest, run_sweep
from gisp_engine.choose.table import sweep_table
from gisp_engine.jobs import background as jobs
from gisp_engine.model.loading import load_model
from gisp_engine.pruning.trajectory import Trajectory


def _star(at, title: str) -> tuple[float, float] | None:
    fig = chart(at, title)
    stars = [t for t in fig["data"] if t["name"].startswith("recommended")]
    return (float(decode(stars[0]["x"])[0]), float(decode(stars[0]["y"])[0])) if stars else None


def test_choose_sweeps_in_the_background_then_recommends(runs, data_dir, no_jobs_left):
    path = runs["iterative"]
    traj = Trajectory.load(path)
    at = open_page("pages/6_Choose.py", select=path)
    no_errors(at)
    assert any("No step of this trajectory is evaluated yet" in i.value for i in at.info)
    at.number_input[0].set_value(2)  # windows
    next(b for b in at.button if b.label.startswith("Sweep every step")).click().run()
    no_errors(at)
    job = wait_for(lambda: (j := jobs.list_jobs()) and not j[0].active and j[0], timeout=600)
    assert job.kind == "sweep" and job.state == "done", job.error
    assert job.step == job.total == traj.num_steps + 1

    at.run()
    no_errors(at)
    table = sweep_table(traj)
    assert np.isfinite(table.quality["wikitext2"]).all()
    # no constraint: nothing is recommended (no star, no export button), the page asks for one
    assert any(i.value == NO_CONSTRAINT for i in at.info)
    assert not any(s.value.startswith("**Recommended") for s in at.success)
    assert _star(at, "Perplexity against parameter sparsity") is None
    assert not any(b.label == "Export this point" for b in at.button)
    # a constraint every step meets: the sparsest step, stated in words and starred on the chart
    at.radio(key="choose_ppl_kind").set_value("multiple of dense").run()
    at.number_input(key="choose_max_ratio").set_value(1e6).run()
    sparsest = int(np.argmax(table.param_sparsity))
    assert at.success[-1].value.startswith(f"**Recommended:** {describe_step(table, sparsest)}")
    assert any(c.value == "Measured with: WikiText-2 perplexity (seq len 128, BOS stream, first 2)" for c in at.caption)
    x, y = _star(at, "Perplexity against parameter sparsity")
    assert x == pytest.approx(table.param_sparsity[sparsest]) and y == pytest.approx(
        table.quality["wikitext2"][sparsest]
    )


def test_choose_constraints_move_the_recommendation(runs, data_dir):
    path = runs["iterative"]
    traj = Trajectory.load(path)
    run_sweep(
        traj,
        load_model(str(Trajectory.load(path).meta["settings"]["model"]), "cpu", "float32"),
        SweepRequest(tasks=("wikitext2",), limit=2),
    )
    table = sweep_table(traj)
    ppl = table.quality["wikitext2"]
    at = open_page("pages/6_Choose.py", select=path)
    no_errors(at)

    # a multiple of dense between two steps' perplexities: the answer is computed here from the table
    ratios = np.sort(ppl[1:] / ppl[0])
    limit = float((ratios[0] + ratios[1]) / 2) if ratios[1] > ratios[0] else float(ratios[0])
    expected = recommend(table, Constraints(max_perplexity_ratio=limit))
    ok = [s for s in range(len(ppl)) if ppl[s] / ppl[0] <= limit]
    assert expected.step == max(ok, key=lambda s: table.param_sparsity[s])
    at.radio(key="choose_ppl_kind").set_value("multiple of dense").run()
    at.number_input(key="choose_max_ratio").set_value(limit).run()
    no_errors(at)
    assert at.success[-1].value == f"**Recommended:** {expected.text}"
    x, _ = _star(at, "Perplexity against parameter sparsity")
    assert x == pytest.approx(table.param_sparsity[expected.step])
    shown = at.dataframe[-1].value
    assert list(shown["meets all"]) == [bool(m) for m in expected.meets]

    # nothing meets a perplexity below the dense model's: the page says which constraint binds
    at.radio(key="choose_ppl_kind").set_value("absolute").run()
    at.number_input(key="choose_max_ppl").set_value(float(np.floor(ppl.min() * 0.5) or 1.0)).run()
    no_errors(at)
    assert not at.success or not at.success[-1].value.startswith("**Recommended")
    assert "No step meets perplexity <=" in at.warning[-1].value

    # "Export this point" opens the exporter at the recommended step
    at.radio(key="choose_ppl_kind").set_value("multiple of dense").run()
    at.number_input(key="choose_max_ratio").set_value(1e6).run()
    next(b for b in at.button if b.label == "Export this point").click().run()
    no_errors(at)
    sparsest = int(np.argmax(table.param_sparsity))
    assert at.select_slider[0].value == sparsest


def test_learn_page_illustrates_with_the_examples(runs):
    """Four ideas, four pictures (as Home promises), among them GISP's uneven widths beside Wanda-sp's even ones."""
    from apptest import ROOT

    at = open_page("pages/7_Learn.py")
    no_errors(at)
    assert [h.value for h in at.header][:4] == [
        "1. A score for every head and channel",
        "2. One global ranking",
        "3. Iterative: a little at a time",
        "4. Nested subnetworks: prune once, deploy many",
    ]
    examples = ROOT / "cache" / "examples"
    if not (examples / "smollm2-135m-ppl-iterative" / "evaluations.json").is_file():
        require("the examples' sweep results")
    # 1: the scores
    scores = decode(chart(at, "Importance of every attention head")["data"][0]["z"]).astype(float)
    assert np.isfinite(scores).sum() > 0 and np.isnan(scores[0]).all()  # layer 0 is protected: never scored
    # 2: the global ranking beside a per-layer rule, at about the same sparsity
    fractions = {}
    for name in ("GISP", "Wanda-sp"):
        bars = chart(at, f"{name} · Kept fraction per layer")["data"]
        fractions[name] = [decode(b["y"]).astype(float)[3:29] for b in bars]  # layers 0-2 and 29 are protected
        assert chart(at, f"{name} · MLP channels")["data"][0]["type"] == "heatmap"
    assert all(np.ptp(f) < 1e-9 for f in fractions["Wanda-sp"])  # the same fraction of every layer
    assert all(np.ptp(f) > 0.3 for f in fractions["GISP"])  # uneven: from under a half to whole layers
    assert any("Wanda-sp keeps" in c.value and "in every one" in c.value for c in at.caption)
    # 3: iterative against one-shot; the one-shot's two points are not joined by a line
    curves = chart(at, "wikitext2 of both trajectories")
    ys = {t["name"]: decode(t["y"]).astype(float) for t in curves["data"]}
    assert {name: int(np.isfinite(y).sum()) for name, y in ys.items()} == {"iterative (10 steps)": 11, "one-shot": 2}
    assert np.isnan(ys["one-shot"]).sum() == 1 and not np.isnan(ys["iterative (10 steps)"]).any()
    iterative = ys["iterative (10 steps)"]
    assert iterative[-1] > iterative[0]  # pruning costs perplexity
    # 4: the heatmap of one step: the slider only adds removed heads
    removed = []
    for step in (2, 8):
        at.slider(key="learn_step").set_value(step).run()
        removed.append(decode(chart(at, "Attention heads")["data"][0]["z"]) > 0)
    assert (removed[1] >= removed[0]).all() and removed[1].sum() > removed[0].sum()
    home = open_page(None)
    assert any("four pictures" in link.label for link in home.get("page_link"))


def test_choose_shows_the_series_the_user_asked_for(runs, data_dir, no_jobs_left):
    """A newer series of other settings (here 2 windows) must not replace the one this page's sweep asked for."""
    path = runs["iterative"]
    traj = Trajectory.load(path)
    at = open_page("pages/6_Choose.py", select=path)
    at.number_input[0].set_value(3)  # wikitext2 windows
    next(b for b in at.button if b.label.startswith("Sweep every step")).click().run()
    job = wait_for(lambda: (j := jobs.list_jobs()) and not j[0].active and j[0], timeout=600)
    assert job.state == "done", job.error
    time.sleep(1.1)  # results are stamped to the second, and the tiny model's sweep takes less
    run_sweep(
        traj,
        load_model(str(traj.meta["settings"]["model"]), "cpu", "float32"),
        SweepRequest(tasks=("wikitext2",), limit=2),
        refresh=True,
    )  # newer, same steps: the table's default
    assert sweep_table(traj).labels["wikitext2"].endswith("first 2)")

    at.run()
    no_errors(at)
    picker = at.selectbox(key=f"choose_series_wikitext2_{path}")
    assert "first 3" in picker.format_func(picker.value)
    shown = at.dataframe[-1].value
    three = sweep_table(traj, prefer={"wikitext2": picker.value}).quality["wikitext2"]
    np.testing.assert_allclose(shown["wikitext2"], three)
    two = next(a.key for a in sweep_table(traj).alternatives["wikitext2"] if a.label.endswith("first 2)"))
    picker.set_value(two).run()
    no_errors(at)
    np.testing.assert_allclose(at.dataframe[-1].value["wikitext2"], sweep_table(traj).quality["wikitext2"])
    assert not np.allclose(three, sweep_table(traj).quality["wikitext2"])


def test_compare_says_when_the_two_series_have_different_settings(runs, data_dir):
    """B shows the series of A's settings where it has one; otherwise the page says the two are not comparable.

    Windows of 96 tokens: no other test sweeps them, so what these trajectories remember from elsewhere in the
    session cannot stand in."""
    a, b = Trajectory.load(runs["iterative"]), Trajectory.load(runs["oneshot"])
    dense = load_model(str(a.meta["settings"]["model"]), "cpu", "float32")
    run_sweep(a, dense, SweepRequest(tasks=("wikitext2",), limit=2, seq_len=96), refresh=True)  # A's newest
    run_sweep(b, dense, SweepRequest(tasks=("wikitext2",), limit=3, seq_len=96), refresh=True)
    at = open_page("pages/4_Compare.py", select=runs["iterative"])
    at.selectbox(key="compare_b").set_value(runs["oneshot"]).run()
    no_errors(at)
    (warning,) = [w.value for w in at.warning if "different settings" in w.value]
    assert "A: WikiText-2 perplexity (seq len 96, BOS stream, first 2)" in warning
    assert "B: WikiText-2 perplexity (seq len 96, BOS stream, first 3)" in warning

    run_sweep(b, dense, SweepRequest(tasks=("wikitext2",), limit=2, seq_len=96))  # now both have A's series
    time.sleep(1.1)  # results are stamped to the second
    run_sweep(b, dense, SweepRequest(tasks=("wikitext2",), limit=3, seq_len=96), refresh=True)  # B's newest: 3
    assert sweep_table(b).labels["wikitext2"].endswith("first 3)")  # B alone would show another series
    at.run()
    assert not [w for w in at.warning if "different settings" in w.value]
    assert any(
        c.value == "Both measured with: WikiText-2 perplexity (seq len 96, BOS stream, first 2)" for c in at.caption
    )


def test_choose_shows_a_sweeps_outcome_after_a_reload_and_says_it_resumed(runs, data_dir, no_jobs_left):
    import json

    path = runs["iterative"]
    traj = Trajectory.load(path)
    request = SweepRequest(tasks=("wikitext2",), limit=2)
    job = jobs.submit_sweep(traj, request)
    done = wait_for(lambda: (s := jobs.status(job.key)) and not s.active and s, timeout=600)
    assert done.state == "done", done.error
    # as if it had been cancelled after two points: sweeping again continues it (every point is remembered)
    status_file = jobs.job_dir(job.key) / jobs.STATUS_FILE
    status_file.write_text(json.dumps({**json.loads(status_file.read_text()), "state": "cancelled", "step": 2}))
    again = jobs.submit_sweep(traj, request)
    assert again.key == job.key and again.resumed_from == 2 and again.error is None
    done = wait_for(lambda: (s := jobs.status(job.key)) and not s.active and s, timeout=600)
    assert done.state == "done" and done.error is None and done.resumed_from == 2

    fresh = open_page("pages/6_Choose.py", select=path)  # a reload: a new session, which started nothing
    no_errors(fresh)
    said = [s.value for s in fresh.success]
    assert any(
        s.startswith(f"Sweep finished: {done.total} points") and f"resumed: 2 of {done.total} points" in s for s in said
    ), said
