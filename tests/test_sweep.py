"""Sweeps of a whole trajectory: the same values as `gisp eval`, incremental, resumable, and the recommendation."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gisp_engine import PruneConfig, prune
from gisp_engine.choose.recommend import NO_CONSTRAINT, Constraints, compare_at, recommend
from gisp_engine.choose.sweep import SweepRequest, parse_checks, parse_steps, run_sweep
from gisp_engine.choose.table import sweep_table
from gisp_engine.cli import main
from gisp_engine.core.errors import GispError
from gisp_engine.evaluation import checks
from gisp_engine.evaluation.cost import CostSpec, available_cores
from gisp_engine.model.loading import load_model
from gisp_engine.pruning.trajectory import Trajectory

ROOT = Path(__file__).resolve().parents[1]
ORIGINAL_CHECKS = dict(checks.CHECKS)
BASE = dict(num_samples=4, seq_len=32, protect_first=1, dtype="float32", batch_size=4)


@pytest.fixture
def tiny_trajectory(tiny_llama, data_dir) -> Trajectory:
    return prune(PruneConfig(model=str(tiny_llama), steps=4, max_sparsity=0.5, **BASE)).trajectory


def run_json(capsys, argv: list[str]) -> dict:
    assert main(argv + ["--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


class Killed(Exception):
    """Stands for the process being killed in the middle of a point."""


class Counter:
    """Counts the evaluations a check really computes (a remembered point is not one)."""

    def __init__(self, monkeypatch, task: str, fail_after: int | None = None):
        self.calls: list[int] = []
        check = ORIGINAL_CHECKS[task]

        def run(loaded, trajectory, limit, progress, **options):
            if fail_after is not None and len(self.calls) >= fail_after:
                raise Killed
            self.calls.append(1)
            return check.run(loaded, trajectory, limit, progress, **options)

        monkeypatch.setitem(checks.CHECKS, task, dataclasses.replace(check, run=run))


# ---- the values are those of `gisp eval` --------------------------------------------------------
def test_sweep_equals_gisp_eval_step_by_step(tiny_trajectory, tiny_llama, capsys):
    path = str(tiny_trajectory.path)
    swept = run_json(capsys, ["sweep", "--trajectory", path, "--task", "wikitext2,arc_easy", "--limit", "3"])
    assert swept["computed"] == 2 * 5 and swept["remembered"] == 0
    assert [r["step"] for r in swept["rows"]] == [0, 1, 2, 3, 4]
    for row in swept["rows"]:
        # each point again, by `gisp eval` on a freshly pruned model, not from the store
        ppl = run_json(
            capsys,
            [
                "eval",
                "--trajectory",
                path,
                "--step",
                str(row["step"]),
                "--task",
                "wikitext2",
                "--limit",
                "3",
                "--no-cache",
            ],
        )
        acc = run_json(
            capsys,
            [
                "eval",
                "--trajectory",
                path,
                "--step",
                str(row["step"]),
                "--task",
                "arc_easy",
                "--limit",
                "3",
                "--no-cache",
            ],
        )
        assert row["wikitext2"] == pytest.approx(ppl["perplexity"], rel=1e-5)
        assert row["arc_easy"] == pytest.approx(acc["tasks"]["arc_easy"]["acc"], abs=1e-9)
    # every step is a different model (a sweep that stopped slicing would repeat one value). Not "grows": a
    # random tiny model is worse than uniform (~1300 against 320 tokens), and pruning it lowers perplexity;
    # growth is asserted on the embedded model (test_real_sweep_killed_with_sigkill_resumes)
    ppl = [row["wikitext2"] for row in swept["rows"]]
    assert len(set(ppl)) == len(ppl) and ppl[0] > 320

    again = run_json(capsys, ["sweep", "--trajectory", path, "--task", "wikitext2,arc_easy", "--limit", "3"])
    assert again["computed"] == 0 and again["remembered"] == 10
    assert again["rows"] == swept["rows"]


def test_sweep_prints_the_requested_settings_when_others_are_remembered(tiny_trajectory, capsys):
    """A series of other settings covering more steps must never stand in for the one asked for."""
    path = str(tiny_trajectory.path)
    wide = run_json(capsys, ["sweep", "--trajectory", path, "--limit", "4"])  # every step, 4 windows
    asked = run_json(capsys, ["sweep", "--trajectory", path, "--limit", "2", "--steps", "0,2,4"])
    assert asked["computed"] == 3 and [r["step"] for r in asked["rows"]] == [0, 2, 4]
    assert asked["labels"]["wikitext2"] == "WikiText-2 perplexity (seq len 128, BOS stream, first 2)"
    for row in asked["rows"]:
        fresh = run_json(
            capsys, ["eval", "--trajectory", path, "--step", str(row["step"]), "--limit", "2", "--no-cache"]
        )
        assert row["wikitext2"] == pytest.approx(fresh["perplexity"], rel=1e-6)
        assert row["wikitext2"] != pytest.approx(wide["rows"][row["step"]]["wikitext2"], rel=1e-6)
    # asked again, everything remembered: the same requested values, still not the wider series
    again = run_json(capsys, ["sweep", "--trajectory", path, "--limit", "2", "--steps", "0,2,4"])
    assert again["remembered"] == 3 and again["rows"] == asked["rows"]
    # the table of everything remembered shows the widest series by default, the asked one when preferred
    request = SweepRequest.from_dict(asked["request"])
    assert sweep_table(tiny_trajectory).labels["wikitext2"].endswith("first 4)")
    preferred = sweep_table(tiny_trajectory, prefer=request.series_keys(tiny_trajectory, "float32"))
    assert preferred.labels["wikitext2"].endswith("first 2)")
    assert preferred.quality["wikitext2"][2] == pytest.approx(asked["rows"][1]["wikitext2"])
    assert [len(s.steps) for s in preferred.alternatives["wikitext2"]] == [5, 3]


def test_every_check_has_its_own_limit(tiny_trajectory, capsys):
    path = str(tiny_trajectory.path)
    out = run_json(
        capsys,
        [
            "sweep",
            "--trajectory",
            path,
            "--task",
            "wikitext2,arc_easy",
            "--steps",
            "0,4",
            "--limit",
            "wikitext2=3,arc_easy=2",
        ],
    )
    limits = {(r["task"], r["identity"]["limit"]) for r in checks.load_evaluations(tiny_trajectory)}
    assert limits == {("wikitext2", 3), ("arc_easy", 2)} and out["computed"] == 4
    assert out["labels"]["arc_easy"].endswith("first 2)") and out["labels"]["wikitext2"].endswith("first 3)")
    assert main(["sweep", "--trajectory", path, "--task", "wikitext2", "--limit", "piqa=3", "--quiet"]) == 2
    assert "which --task does not sweep" in capsys.readouterr().err
    assert main(["sweep", "--trajectory", path, "--limit", "many", "--quiet"]) == 2


def test_sweep_killed_part_way_continues_without_recomputing(tiny_trajectory, tiny_llama, monkeypatch):
    loaded = load_model(str(tiny_llama), "cpu", "float32")
    request = SweepRequest(tasks=("wikitext2",), limit=2)
    Counter(monkeypatch, "wikitext2", fail_after=3)
    with pytest.raises(Killed):
        run_sweep(tiny_trajectory, loaded, request)
    stored = sorted(r["step"] for r in checks.load_evaluations(tiny_trajectory))
    assert stored == [0, 1, 2]  # the finished points were kept

    counter = Counter(monkeypatch, "wikitext2")
    report = run_sweep(tiny_trajectory, loaded, request)
    assert len(counter.calls) == 2 and report.computed == 2 and report.remembered == 3
    assert sorted(r["step"] for r in checks.load_evaluations(tiny_trajectory)) == [0, 1, 2, 3, 4]
    # the caller's model was not pruned (the sweep slices a copy)
    assert loaded.model.model.layers[1].mlp.up_proj.weight.shape == (
        tiny_trajectory.geometry.intermediate_size,
        tiny_trajectory.geometry.hidden_size,
    )


def test_a_fully_remembered_sweep_loads_no_model(tiny_trajectory, tiny_llama):
    loaded = load_model(str(tiny_llama), "cpu", "float32")
    request = SweepRequest(tasks=("wikitext2",), limit=2, steps=(0, 2, 4))
    run_sweep(tiny_trajectory, loaded, request)

    def must_not_load():
        raise AssertionError("the model was loaded although every point is remembered")

    report = run_sweep(tiny_trajectory, must_not_load, request, dtype="float32")
    assert report.remembered == 3 and report.computed == 0


def test_cost_sweep_measures_every_step_against_dense(tiny_trajectory, tiny_llama):
    loaded = load_model(str(tiny_llama), "cpu", "float32")
    spec = CostSpec(batch=2, seq_len=16, prompt_len=4, new_tokens=4, repeats=3)
    report = run_sweep(tiny_trajectory, loaded, SweepRequest(tasks=("wikitext2",), limit=2, cost=spec))
    table = sweep_table(tiny_trajectory)
    assert report.computed == 2 * 5
    params = table.cost["param_count"]
    # physically sliced: every later step has fewer parameters, weight bytes are 4 per float32 parameter
    assert np.all(np.diff(params) <= 0) and params[-1] < params[0]
    np.testing.assert_array_equal(table.cost["weight_bytes"], params * 4)
    assert table.cost["param_ratio"][0] == 1.0 and table.cost["prefill_speedup"][0] == 1.0
    # every speed-up carries the spread of its repeats' ratios (step 0 is the dense model against itself)
    for what in ("prefill", "decode"):
        low, mid, high = (table.cost[f"{what}_speedup{s}"] for s in ("_low", "", "_high"))
        assert np.all(low <= mid) and np.all(mid <= high) and low[0] == high[0] == 1.0
    assert table.cost_label.endswith(f"{available_cores()} threads, median of 3 interleaved repeats)")
    np.testing.assert_allclose(table.cost["param_ratio"], params / params[0])
    assert np.all(table.cost["prefill_tok_s"] > 0) and np.all(table.cost["peak_bytes"] >= table.cost["weight_bytes"])
    # the decoder weights the trajectory counts are a part of every parameter count
    removed = tiny_trajectory.steps[0].kept_params - tiny_trajectory.steps[-1].kept_params
    assert params[0] - params[-1] == removed


# ---- bad input -----------------------------------------------------------------------------------
def test_bad_sweeps_are_clear_errors_and_lose_nothing(tiny_trajectory, tiny_models, tiny_llama, capsys):
    other = load_model(str(tiny_models[("llama", False)]), "cpu", "float32")
    with pytest.raises(GispError, match="was built for model"):
        run_sweep(tiny_trajectory, other, SweepRequest(limit=2))
    with pytest.raises(GispError, match="unknown task 'nope'"):
        parse_checks("wikitext2,nope")
    with pytest.raises(GispError, match="outside this trajectory's steps"):
        parse_steps("0,9", tiny_trajectory)
    with pytest.raises(GispError, match="step numbers"):
        parse_steps("zero", tiny_trajectory)
    assert main(["sweep", "--trajectory", str(tiny_trajectory.path), "--task", "bogus", "--quiet"]) == 2
    assert "unknown task 'bogus'" in capsys.readouterr().err
    assert checks.load_evaluations(tiny_trajectory) == []


# ---- the recommendation ----------------------------------------------------------------------------
def _independent(table, c: Constraints) -> int | None:
    """The sparsest step meeting ``c``, computed with pandas from the table's rows alone."""
    if c == Constraints():
        return None  # nothing is recommended until a constraint is set
    df = pd.DataFrame(table.to_rows())
    ok = pd.Series(True, index=df.index)
    if c.max_perplexity is not None:
        ok &= df["wikitext2"] <= c.max_perplexity
    if c.max_perplexity_ratio is not None:
        ok &= df["wikitext2"] / df["wikitext2"].iloc[0] <= c.max_perplexity_ratio
    if c.min_average_accuracy is not None:
        ok &= df["cmqa"] >= c.min_average_accuracy
    for task, value in c.min_task_accuracy:
        ok &= df[task] >= value
    if c.max_memory_mb is not None:
        ok &= df["peak_bytes"] / 2**20 <= c.max_memory_mb
    if c.min_prefill_speedup is not None:  # met only when the lowest of the repeats meets it
        ok &= df["prefill_speedup_low"] >= c.min_prefill_speedup
    ok &= df["wikitext2"].notna()
    if not ok.any():
        return None
    return int(df[ok].sort_values(["param_sparsity", "step"]).iloc[-1]["step"])


def _synthetic_rows(traj: Trajectory) -> list[dict]:
    """Remembered-evaluation rows with chosen values (a non-monotone perplexity, an accuracy, a cost)."""
    ppl = [20.0, 22.0, 21.0, 35.0, 90.0]
    acc = [0.60, 0.58, 0.55, 0.50, 0.40]
    speed = [1.0, 1.1, 1.3, 1.5, 1.9]
    low = [1.0, 0.9, 1.25, 1.45, 1.5]  # step 4's repeats straddle 1.6: its median alone would meet >= 1.6
    mem = [400, 380, 350, 320, 300]
    rows = []
    for step in range(traj.num_steps + 1):
        base = {"step": step, "param_sparsity": traj.steps[step].param_sparsity, "created": "2026"}
        rows.append(
            {
                **base,
                "task": "wikitext2",
                "metric": "perplexity",
                "label": "ppl",
                "value": ppl[step],
                "identity": {"task": "wikitext2", "step": step},
            }
        )
        rows.append(
            {
                **base,
                "task": "cmqa",
                "metric": "accuracy",
                "label": "cmqa",
                "value": acc[step],
                "identity": {"task": "cmqa", "step": step},
                "details": {"tasks": {"piqa": {"acc": acc[step] + 0.1}, "boolq": {"acc": acc[::-1][step]}}},
            }
        )
        rows.append(
            {
                **base,
                "task": "cost",
                "metric": "cost",
                "label": "cost",
                "value": speed[step],
                "identity": {"task": "cost", "step": step},
                "details": {
                    "prefill_speedup": speed[step],
                    "prefill_speedup_low": low[step],
                    "prefill_speedup_high": speed[step] + 0.1,
                    "peak_bytes": mem[step] * 2**20,
                },
            }
        )
    return rows


@pytest.mark.parametrize(
    "constraints",
    [
        Constraints(),
        Constraints(max_perplexity=30),
        Constraints(max_perplexity_ratio=1.1),
        Constraints(max_perplexity=100, min_average_accuracy=0.55),
        Constraints(min_task_accuracy=(("piqa", 0.62),)),
        Constraints(max_memory_mb=360, max_perplexity=40),
        Constraints(min_prefill_speedup=1.2, max_perplexity_ratio=2.0),
        Constraints(max_perplexity=10),  # nothing meets it
        Constraints(min_prefill_speedup=1.4, max_perplexity_ratio=1.5),  # each alone is met, never together
        Constraints(min_prefill_speedup=1.6),  # only step 4's median meets it, and its spread straddles it
    ],
)
def test_recommendation_equals_an_independent_computation(tiny_trajectory, constraints):
    table = sweep_table(tiny_trajectory, _synthetic_rows(tiny_trajectory))
    assert "piqa" in table.quality and "boolq" in table.quality  # the suite's tasks are columns too
    rec = recommend(table, constraints)
    assert rec.step == _independent(table, constraints)
    if rec.step is not None:
        assert rec.text.startswith(f"step {rec.step}: {table.param_sparsity[rec.step]:.1%} of parameters removed")
        assert (
            rec.meets[rec.step]
            and not rec.meets[[s for s in range(5) if table.param_sparsity[s] > table.param_sparsity[rec.step]]].any()
        )
    elif constraints == Constraints():
        assert rec.text == NO_CONSTRAINT and not rec.meets.any()
    elif constraints.max_perplexity == 10:
        assert rec.binding == ["perplexity <= 10"] and "the best wikitext2 measured is 20 (step 0)" in rec.text
    elif constraints.min_prefill_speedup == 1.6:
        assert rec.uncertain == {"prefill >= 1.6x dense": [4]} and "too close to call" in rec.text
        assert "No step meets prefill >= 1.6x dense" in rec.text
    else:  # exactly the steps where each holds, not a span that would include steps where it fails
        p = table.param_sparsity
        assert "contradict" in rec.text
        assert f"prefill >= 1.4x dense holds at steps 3 ({p[3]:.1%}) and 4 ({p[4]:.1%})" in rec.text
        assert f"perplexity <= 1.5x dense holds at steps 0 ({p[0]:.1%}), 1 ({p[1]:.1%}) and 2 ({p[2]:.1%})" in rec.text


def test_recommendation_words(tiny_trajectory):
    table = sweep_table(tiny_trajectory, _synthetic_rows(tiny_trajectory))
    rec = recommend(table, Constraints(max_perplexity_ratio=1.8))
    p = table.param_sparsity[3]
    assert rec.step == 3
    assert rec.text.startswith(
        f"step 3: {p:.1%} of parameters removed, perplexity 35 (1.8x dense), "
        f"average accuracy 50.0% (dense 60.0%), prefill 1.50x dense [1.45, 1.60], "
        f"peak memory 320 MiB"
    )
    assert "a sparser step would break: perplexity <= 1.8x dense" in rec.text


def test_constraints_that_cannot_be_used_are_clear_errors(tiny_trajectory):
    for bad, words in [
        (dict(max_perplexity=0.5), "below 1"),
        (dict(min_average_accuracy=45), "fraction"),
        (dict(max_memory_mb=-1), "above 0"),
        (dict(min_prefill_speedup=0), "above 0"),
        (dict(min_decode_speedup=-1), "above 0"),
        (dict(min_task_accuracy=(("piqa", 1.5),)), "fraction"),
    ]:
        with pytest.raises(GispError, match=words):
            Constraints(**bad)
    only_ppl = [r for r in _synthetic_rows(tiny_trajectory) if r["task"] == "wikitext2"]
    with pytest.raises(GispError, match="no measurement of"):
        recommend(sweep_table(tiny_trajectory, only_ppl), Constraints(min_prefill_speedup=1.2))


def test_compare_in_words(tiny_trajectory):
    rows = _synthetic_rows(tiny_trajectory)
    a = sweep_table(tiny_trajectory, rows)
    worse = [dict(r, value=r["value"] * 2) if r["task"] == "wikitext2" else r for r in rows]
    b = sweep_table(tiny_trajectory, worse)
    text = compare_at(a, b, 3, 3)
    assert text == f"A has 50% lower perplexity than B at {a.param_sparsity[3]:.0%} (35 vs 70)"
    assert compare_at(b, a, 3, 3, names=("one-shot", "iterative")).startswith("iterative has 50% lower perplexity")
    assert "same cmqa accuracy" in compare_at(a, b, 2, 2, column="cmqa")
    # far apart: the ratio, not a percentage that rounds to 100%
    c = sweep_table(tiny_trajectory, worse)
    a.quality["wikitext2"][3], c.quality["wikitext2"][3] = 812.7, 245600.0
    assert (
        compare_at(a, c, 3, 3) == f"A has 302× lower perplexity than B at {a.param_sparsity[3]:.0%} (812.7 vs 245,600)"
    )


# ---- the embedded model: killed for real, resumed, cost ratios -------------------------------------
# `gisp sweep` whose stored points are watched: each is written down (events/stored-<step>), and with a hold
# count the process stops right after storing that many points, until it is killed (no timing in the test)
WATCHED_SWEEP = r"""
import os, sys, time
from pathlib import Path
events, hold, argv = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
from gisp_engine.evaluation import checks
from gisp_engine.cli import main

remember = checks.remember_evaluation

def watched(trajectory, row):
    remember(trajectory, row)
    (events / f".stored-{row['step']}").write_text("")
    os.replace(events / f".stored-{row['step']}", events / f"stored-{row['step']}")
    while len(list(events.glob("stored-*"))) == hold:
        time.sleep(1)

checks.remember_evaluation = watched
sys.exit(main(argv))
"""


def _watched_sweep(events: Path, hold: int, argv: list[str]) -> list[str]:
    events.mkdir(exist_ok=True)
    return [sys.executable, "-c", WATCHED_SWEEP, str(events), str(hold), *argv]


def _stored_steps(events: Path) -> list[int]:
    return sorted(int(p.name.removeprefix("stored-")) for p in events.glob("stored-*"))


@pytest.mark.real_model
def test_real_sweep_killed_with_sigkill_resumes(embedded_model_dir, data_dir, isolated_cache, tmp_path):
    """A real kill -9 held after two points; the rerun remembers those two and computes only the other four."""
    example = ROOT / "cache" / "examples" / "smollm2-135m-ppl-iterative"
    traj = Trajectory.load(example)
    evals = checks.evals_path(traj)
    argv = [
        "sweep",
        "--trajectory",
        str(example),
        "--limit",
        "6",
        "--steps",
        "0,2,4,6,8,10",
        "--dtype",
        "float32",
        "--device",
        "cpu",
    ]
    env = dict(os.environ, GISP_CACHE_DIR=str(isolated_cache))
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _watched_sweep(killed, 2, argv + ["--quiet"]),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while len(_stored_steps(killed)) < 2:  # the hook holds the sweep there: no race with the kill
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "two points were never stored"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # the store itself (the example also ships results of other settings in its folder) holds the two points
    assert sorted(r["step"] for r in json.loads(evals.read_text())["results"]) == [0, 2] == _stored_steps(killed)

    resumed = tmp_path / "resumed"
    out = subprocess.run(
        _watched_sweep(resumed, -1, argv + ["--json", "--quiet"]), env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["remembered"] == 2 and report["computed"] == 4
    assert _stored_steps(resumed) == [4, 6, 8, 10], "only the points not stored before are computed"
    ppl = [r["wikitext2"] for r in report["rows"]]
    assert [r["step"] for r in report["rows"]] == [0, 2, 4, 6, 8, 10]
    assert 10 < ppl[0] < 80 and ppl[-1] > 2 * ppl[0]  # dense SmolLM2-135M; much worse at 53% sparsity
    assert not math.isnan(sum(ppl))
