"""The explorer's pages through Streamlit's own app testing (``AppTest``), on tiny trajectories.

Every page is opened from the home page as a user would; the assertions read the plotly figures
the page sent (their data, decoded) and the metrics it shows, and compare them with what the
trajectory says directly.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from apptest import ROOT, chart, decode, fill_run_form, metrics, no_errors, open_page, wait_for
from needs import require

from gisp_engine import PruneConfig, Trajectory, prune
from gisp_engine.core import settings
from gisp_engine.evaluation.checks import load_evaluations
from gisp_engine.jobs import background as jobs


# ---- home -------------------------------------------------------------------------------------
def test_home_lists_cache_entries_and_examples(runs):
    at = open_page(None)
    no_errors(at)
    table = at.dataframe[0].value
    names = set(table["name"])
    assert {Path(p).name for p in runs.values()} <= names
    examples = ROOT / "cache" / "examples"
    if examples.is_dir():
        assert {p.name for p in examples.iterdir() if (p / "trajectory.json").is_file()} <= names
    assert any("Default model" in h.value for h in at.subheader)


# ---- explore ----------------------------------------------------------------------------------
def test_explore_slider_changes_heatmaps_and_counts(runs):
    traj = Trajectory.load(runs["iterative"])
    at = open_page("pages/2_Explore.py", select=runs["iterative"])
    no_errors(at)
    heads_grid, channel_grid = traj.space.as_grid(traj.removal_step)
    seen = {}
    for step in (1, 4):
        at.select_slider[0].set_value(step).run()
        no_errors(at)
        heads = decode(chart(at, "Attention heads")["data"][0]["z"])
        channels = decode(chart(at, "MLP channels")["data"][0]["z"])
        # a cell shows its removal step exactly when the structure is gone at this step
        gone = (heads_grid > 0) & (heads_grid <= step)
        np.testing.assert_array_equal(heads > 0, gone)
        np.testing.assert_array_equal(heads[gone], heads_grid[gone])
        assert int((channels > 0).sum()) == int(((channel_grid > 0) & (channel_grid <= step)).sum())
        kept = traj.kept(step)
        shown = metrics(at)
        heads_label, channels_label = (
            f"Query heads kept (of {heads_grid.size})",
            f"Channels kept (of {channel_grid.size})",
        )
        assert shown[heads_label] == str(sum(len(layer["heads"]) for layer in kept["layers"]))
        assert shown[channels_label] == str(sum(len(layer["channels"]) for layer in kept["layers"]))
        assert shown["Parameter sparsity"] == f"{traj.steps[step].param_sparsity:.1%}"
        assert shown["Structural ratio"] == f"{traj.steps[step].structural_ratio:.1%}"
        seen[step] = (heads, shown)
    assert not np.array_equal(seen[1][0], seen[4][0])
    assert seen[1][1][channels_label] != seen[4][1][channels_label]
    curve = chart(at, "Trajectory")
    marker = next(t for t in curve["data"] if t["name"] == "chosen point")
    assert decode(marker["x"])[0] == pytest.approx(traj.steps[4].param_sparsity)


def test_explore_redraws_its_charts_in_place(runs):
    """A slider move hands new figures to the same four charts (their ids stay), which the browser redraws with
    Plotly.react; st.plotly_chart's id hashes the figure, so there every move built every chart again."""
    at = open_page("pages/2_Explore.py", select=runs["iterative"])

    def charts() -> dict[str, str]:
        return {
            el.proto.id: json.loads(json.loads(el.proto.json_args)["spec"])["layout"]["title"]["text"]
            for el in at.get("component_instance")
        }

    at.select_slider[0].set_value(1).run()
    before = charts()
    at.select_slider[0].set_value(4).run()
    after = charts()
    no_errors(at)
    # the four slider-driven charts, and the history, step-score and rank-stability charts of "Why was it removed?"
    assert len(before) == 7 and before.keys() == after.keys()  # the same charts
    assert before != after  # with the new step's figures
    assert not at.get("plotly_chart")


def test_explore_plain_charts_setting_uses_streamlits_own(runs, monkeypatch):
    """GISP_PLAIN_CHARTS=1: the same seven figures through st.plotly_chart (no component frame)."""
    monkeypatch.setenv("GISP_PLAIN_CHARTS", "1")
    at = open_page("pages/2_Explore.py", select=runs["iterative"])
    at.select_slider[0].set_value(4).run()
    no_errors(at)
    assert len(at.get("plotly_chart")) == 7 and not at.get("component_instance")
    plain = decode(chart(at, "Attention heads")["data"][0]["z"])
    monkeypatch.delenv("GISP_PLAIN_CHARTS")
    at.run()  # the same step through the component: the same heatmap
    assert not at.get("plotly_chart") and len(at.get("component_instance")) == 7
    np.testing.assert_array_equal(decode(chart(at, "Attention heads")["data"][0]["z"]), plain)
    assert (plain > 0).any()  # step 4 has removed heads


def test_explore_play_button_advances_the_slider_and_grouped_view(runs):
    at = open_page("pages/2_Explore.py", select=runs["iterative"])
    at.select_slider[0].set_value(1).run()
    at.button(key=f"play_button_{Path(runs['iterative']).name}").click().run()
    no_errors(at)
    assert at.select_slider[0].value == 2  # each run while playing shows the next step
    assert at.button(key=f"play_button_{Path(runs['iterative']).name}").label.endswith("Pause")
    at.run()
    assert at.select_slider[0].value == 3
    at.button(key=f"play_button_{Path(runs['iterative']).name}").click().run()
    assert at.select_slider[0].value == 3 and at.button[0].label.endswith("Play")
    at.select_slider[0].set_value(4).run()
    at.button[0].click().run()  # Play at the last step starts again from the dense model
    assert at.select_slider[0].value == 0
    at.button[0].click().run()

    at.select_slider[0].set_value(3).run()
    at.radio[0].set_value("original order, grouped").run()
    no_errors(at)
    grouped = decode(chart(at, "MLP channels")["data"][0]["z"])
    assert grouped.shape[0] == 4 and ((grouped >= 0) & (grouped <= 1)).all() and (grouped < 1).any()


def test_explore_reports_a_damaged_trajectory_in_the_page(runs):
    folder = Path(runs["iterative"])
    (folder / "structures.safetensors").write_bytes(b"not a safetensors file")
    at = open_page("pages/2_Explore.py", select=str(folder))
    assert not at.exception
    assert any("corrupt trajectory" in e.value for e in at.error)


# ---- evaluate ---------------------------------------------------------------------------------
def test_evaluate_dense_and_pruned_is_remembered_and_drawn(runs, data_dir):
    at = open_page("pages/3_Evaluate.py", select=runs["iterative"])
    no_errors(at)
    at.select_slider[0].set_value(3).run()
    at.number_input[0].set_value(2)  # windows
    at.button[0].click().run()  # the form's submit button
    no_errors(at)
    shown = metrics(at)
    dense = next(v for k, v in shown.items() if k.startswith("dense"))
    pruned = next(v for k, v in shown.items() if k.startswith("pruned"))
    assert float(dense) > 1 and float(pruned) > 1 and dense != pruned
    rows = load_evaluations(Trajectory.load(runs["iterative"]))
    assert sorted(r["step"] for r in rows) == [0, 3]
    assert all(r["details"]["windows"] == 2 and r["details"]["seq_len"] == 128 for r in rows)
    stored = {r["step"]: r["value"] for r in rows}  # what is shown is what was stored, to the digits shown
    assert (dense, pruned) == (f"{stored[0]:.3f}", f"{stored[3]:.3f}")

    # the evaluations appear on the Explore curve, at their sparsities
    at.switch_page("pages/2_Explore.py").run()
    curve = chart(at, "Trajectory")
    evaluated = [t for t in curve["data"] if t["name"].startswith("WikiText-2 perplexity")]
    assert len(evaluated) == 1
    shown = decode(evaluated[0]["y"]).astype(float)
    assert sorted(shown[np.isfinite(shown)]) == pytest.approx(sorted(r["value"] for r in rows))
    assert np.isnan(shown).sum() == 1  # steps 0 and 3 are not neighbours: no line joins them

    # generation, dense and pruned side by side
    at.switch_page("pages/3_Evaluate.py").run()
    gen = next(b for b in at.button if b.label.startswith("Generate"))
    gen.click().run()
    no_errors(at)
    outputs = [t.value for t in at.text_area if t.key and t.key.startswith("generated_")]
    assert len(outputs) == 2 and all(o.startswith("The capital of France is") for o in outputs)


def test_evaluate_bad_setting_and_missing_model_show_errors(runs, tmp_path):
    at = open_page("pages/3_Evaluate.py", select=runs["iterative"])
    at.number_input[0].set_value(1)
    at.number_input[1].set_value(4096)  # longer than the tiny model's context (256)
    at.button[0].click().run()
    assert not at.exception
    assert any("longer than the model's context" in e.value for e in at.error)

    target = Path(runs["iterative"]).parent / "orphan"  # built for a model folder that is gone
    shutil.copytree(runs["iterative"], target)
    meta = json.loads((target / "trajectory.json").read_text())
    meta["settings"]["model"] = str(tmp_path / "no-such-model")
    (target / "trajectory.json").write_text(json.dumps(meta))
    at = open_page("pages/3_Evaluate.py", select=str(target))
    at.button[0].click().run()
    assert not at.exception
    assert any("does not exist" in e.value for e in at.error)


def test_evaluate_offers_the_accuracy_tasks_of_the_engine(runs, data_dir):
    from gisp_engine.evaluation.checks import available_checks

    assert "boolq" in available_checks()
    at = open_page("pages/3_Evaluate.py", select=runs["iterative"])
    at.select_slider[0].set_value(4).run()
    next(s for s in at.selectbox if s.label == "Check").set_value("boolq")
    at.number_input[0].set_value(4)  # items
    at.button[0].click().run()
    no_errors(at)
    values = [float(v) for k, v in metrics(at).items() if k.startswith(("dense", "pruned"))]
    assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values)
    rows = load_evaluations(Trajectory.load(runs["iterative"]))
    assert {r["metric"] for r in rows} == {"accuracy"} and sorted(r["step"] for r in rows) == [0, 4]
    at.switch_page("pages/2_Explore.py").run()
    curve = chart(at, "Trajectory")
    assert any(t["name"].startswith("boolq accuracy") for t in curve["data"])
    assert curve["layout"]["yaxis2"]["title"]["text"] == "accuracy"


# ---- compare ----------------------------------------------------------------------------------
def test_compare_overlap_and_difference(runs):
    from gisp_engine.explore.view import jaccard_curve

    at = open_page("pages/4_Compare.py", select=runs["iterative"])
    at.selectbox(key="compare_b").set_value(runs["oneshot"]).run()
    no_errors(at)
    a, b = Trajectory.load(runs["iterative"]), Trajectory.load(runs["oneshot"])
    expected = jaccard_curve(a, b)
    fig = chart(at, "Overlap of the kept sets")
    np.testing.assert_allclose(decode(fig["data"][0]["y"]), expected.all)
    assert ((expected.all > 0) & (expected.all <= 1)).all()

    last = len(expected.sparsity) - 1
    at.select_slider[0].set_value(last).run()
    no_errors(at)
    codes_last = decode(chart(at, "Attention heads: A")["data"][0]["z"])
    ka, kb = a.keep_mask(int(expected.step_a[last])), b.keep_mask(int(expected.step_b[last]))
    heads_a, _ = a.space.as_grid(ka)
    heads_b, _ = b.space.as_grid(kb)
    np.testing.assert_array_equal(codes_last == 0, heads_a & heads_b)
    np.testing.assert_array_equal(codes_last == 1, heads_a & ~heads_b)
    assert metrics(at)["Jaccard (all structures)"] == f"{expected.all[last]:.3f}"

    at.select_slider[0].set_value(0).run()
    codes_first = decode(chart(at, "Attention heads: A")["data"][0]["z"])
    assert not np.array_equal(codes_first, codes_last) and (codes_first == 0).all()


def test_compare_refuses_trajectories_of_different_models(runs):
    at = open_page("pages/4_Compare.py", select=runs["iterative"])
    at.selectbox(key="compare_b").set_value(runs["other"]).run()
    assert not at.exception
    assert any("different models" in e.value for e in at.error)


# ---- export -----------------------------------------------------------------------------------
def test_export_page_writes_the_subnetwork_and_shows_how_to_load_it(runs):
    at = open_page("pages/5_Export.py", select=runs["iterative"])
    no_errors(at)
    assert not at.text_input  # the export goes into the cache; a browser names no folder
    at.select_slider[0].set_value(2).run()
    at.button[0].click().run()
    no_errors(at)
    out = Path(at.session_state["export_last"]["path"])
    assert out.parent == settings.cache_dir() / "exports"
    manifest = json.loads((out / "gisp_manifest.json").read_text())
    assert manifest["trajectory"]["step"] == 2
    assert any(out.name in s.value for s in at.success)
    assert any(f'load_pruned("{out.name}")' in c.value for c in at.code)


def test_export_page_writes_every_step_in_one_folder(runs):
    at = open_page("pages/5_Export.py", select=runs["iterative"])
    at.radio(key="export_kind").set_value("every step in one folder").run()
    at.select_slider[0].set_value(1).run()
    at.button[0].click().run()
    no_errors(at)
    out = Path(at.session_state["export_last"]["path"])
    manifest = json.loads((out / "gisp_manifest.json").read_text())
    assert manifest["kind"] == "elastic" and len(manifest["steps"]) > 2
    assert any("gisp_step=1" in c.value and out.name in c.value for c in at.code)


def test_run_page_bad_settings_show_errors(tiny_llama, tmp_path):
    at = open_page("pages/1_Run.py")
    fill_run_form(at, str(tiny_llama), 0.95)
    at.button[0].click().run()
    assert not at.exception
    assert any("only" in e.value and "protected layers" in e.value for e in at.error)
    fill_run_form(at, str(tmp_path / "missing-model"), 0.3)
    at.button[0].click().run()
    assert not at.exception
    assert any("does not exist" in e.value for e in at.error)
    # margin calibration items per task: more than a task's pool is refused before anything starts
    fill_run_form(at, str(tiny_llama), 0.3)
    next(s for s in at.selectbox if s.label == "Objective").set_value("margin")
    next(t for t in at.text_input if t.label == "Tasks (task objectives)").set_value("openbookqa")
    at.number_input(key="run_calib_items").set_value(500)
    at.button[0].click().run()
    assert not at.exception
    assert any("--calib-items 500 is more than its calibration pool holds (100 items)" in e.value for e in at.error)
    assert jobs.list_jobs() == []


def test_run_page_runs_in_background_and_answers_repeats_from_cache(tiny_llama, data_dir, no_jobs_left):
    at = open_page("pages/1_Run.py")
    fill_run_form(at, str(tiny_llama), 0.3)
    at.button[0].click().run()
    no_errors(at)
    assert any("Started run" in s.value for s in at.success)
    key = at.session_state["run_last_key"]
    assert jobs.status(key) is not None

    # a second tab with the same request finds the same run (or its result), never a second one
    other = open_page("pages/1_Run.py")
    fill_run_form(other, str(tiny_llama), 0.3)
    other.button[0].click().run()
    no_errors(other)
    assert other.session_state["run_last_key"] == key
    assert len(jobs.list_jobs()) == 1

    done = wait_for(lambda: (s := jobs.status(key)) is not None and not s.active and s)
    assert done.state == "done", done.error
    at.run()
    no_errors(at)
    assert any("Done in" in s.value for s in at.success)

    fill_run_form(at, str(tiny_llama), 0.3)
    at.button[0].click().run()
    assert any("Answered from the cache" in s.value for s in at.success)


def _finished_run(key: str = "0123456789abcdef") -> str:
    """A finished run in the registry, as the list below the Run form shows it."""
    folder = jobs.job_dir(key)
    folder.mkdir(parents=True)
    config = {"model": "some-model", "method": "gisp", "objective": "perplexity", "steps": 2, "max_sparsity": 0.3}
    jobs._write_status(
        folder,
        jobs.JobStatus(
            key=key, state="done", config=config, started_unix=time.time(), trajectory="/somewhere", elapsed_s=3.0
        ),
    )
    return key


def test_run_page_refuses_a_malformed_task_file_and_keeps_the_runs(tiny_llama, tmp_path):
    key = _finished_run()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "Q", "choices": ["a", "b"], "gold": 0}\n{"query": "Q", "choices": ["a"\n')
    at = open_page("pages/1_Run.py")
    assert any(key in m.value for m in at.markdown)
    fill_run_form(at, str(tiny_llama), 0.3)
    next(s for s in at.selectbox if s.label == "Objective").set_value("margin")
    next(t for t in at.text_input if t.label == "Tasks (task objectives)").set_value("")
    at.get("file_uploader")[1].set_value(("bad.jsonl", bad.read_bytes(), "application/jsonl"))  # a custom task file
    at.button[0].click().run()
    assert not at.exception
    assert any("bad.jsonl:2: malformed JSON" in e.value for e in at.error)  # refused before anything starts
    assert [j.key for j in jobs.list_jobs()] == [key]
    assert "Runs" in [h.value for h in at.subheader] and any(key in m.value for m in at.markdown)  # still listed


def test_run_page_says_a_cancelled_run_resumed_and_from_which_step(tiny_llama, data_dir, no_jobs_left):
    at = open_page("pages/1_Run.py")
    fill_run_form(at, str(tiny_llama), 0.45, steps=400)  # long enough to be cancelled while it runs
    at.button[0].click().run()
    assert any("Started run" in s.value for s in at.success)
    key = at.session_state["run_last_key"]
    wait_for(lambda: (s := jobs.status(key)) is not None and s.state == "running" and s.step >= 1)
    assert jobs.cancel(key).state == "cancelled"
    done = json.loads((jobs.cache.partial_path(key) / "state.json").read_text())["done"]

    fill_run_form(at, str(tiny_llama), 0.45, steps=400)
    at.button[0].click().run()
    no_errors(at)
    said = [s.value for s in at.success]
    assert any(f"Resumed run `{key}` in the background from step {done} of 400" in s for s in said), said
    assert not any("Started run" in s for s in said)
    assert jobs.status(key).resumed_from == done


def test_a_fresh_session_opens_on_an_example_not_on_another_sessions_run(runs):
    from gisp_engine.explore.view import available_trajectories

    rows = available_trajectories()
    examples = [r["path"] for r in rows if r["source"] == "example"]
    if not examples:
        require("the example trajectories")
    first = open_page("pages/2_Explore.py")  # one browser: it picks a trajectory, then starts a run
    assert first.selectbox(key="pick_trajectory").value == examples[0]
    first.selectbox(key="pick_trajectory").set_value(runs["oneshot"]).run()
    newest = prune(
        PruneConfig(
            model=Trajectory.load(runs["iterative"]).meta["settings"]["model"],
            steps=1,
            max_sparsity=0.2,
            num_samples=4,
            seq_len=32,
            protect_first=1,
            dtype="float32",
            batch_size=4,
        )
    ).path
    assert available_trajectories()[0]["path"] == str(newest)  # the cache's newest entry

    second = open_page("pages/2_Explore.py")  # a fresh browser opens on the example, as the first did
    no_errors(second)
    assert second.selectbox(key="pick_trajectory").value == examples[0]
    second.selectbox(key="pick_trajectory").set_value(str(newest)).run()
    first.run()  # and neither browser's choice moves the other's
    assert first.selectbox(key="pick_trajectory").value == runs["oneshot"]
    assert second.selectbox(key="pick_trajectory").value == str(newest)
