"""The Explore page's "Why was it removed?" section through AppTest: a structure's history, a step's scores and
rank stability drawn from the trajectory's own arrays; the messages for a fixed ranking and for no scores."""

from __future__ import annotations

import numpy as np
import pytest
from apptest import chart, copy_into_cache, decode, no_errors, open_page
from tiny import cache_dir

from gisp_engine import PruneConfig, Trajectory, prune
from gisp_engine.explore import explain


@pytest.fixture(scope="module")
def tiny_runs(tiny_llama, data_dir, tmp_path_factory):
    with cache_dir(tmp_path_factory.mktemp("why-cache")):
        base = dict(model=str(tiny_llama), num_samples=4, seq_len=32, protect_first=1, dtype="float32", batch_size=4)
        return {
            "iterative": prune(PruneConfig(steps=4, max_sparsity=0.5, **base)).path,
            "oneshot": prune(PruneConfig(steps=1, max_sparsity=0.5, **base)).path,
            "bare": prune(PruneConfig(steps=1, max_sparsity=0.3, save_scores=False, **base)).path,
        }


@pytest.fixture
def runs(tiny_runs, isolated_cache):
    return copy_into_cache(tiny_runs, isolated_cache)


def test_history_scores_and_stability_on_the_explore_page(runs):
    traj = Trajectory.load(runs["iterative"])
    at = open_page("pages/2_Explore.py", select=runs["iterative"])
    no_errors(at)
    sid = int(np.flatnonzero(traj.removal_step == 3)[0])
    layer, kind, index = traj.name(sid)
    at.number_input(key=f"explore_structure_layer_{traj.path.name}").set_value(layer)
    at.radio(key=f"explore_structure_kind_{traj.path.name}").set_value(kind)
    at.number_input(key=f"explore_structure_index_{traj.path.name}").set_value(index).run()
    no_errors(at)
    fig = chart(at, "History of")
    assert "removed at step 3" in fig["layout"]["title"]["text"]
    by_name = {t.get("name"): t for t in fig["data"]}
    expected = explain.structure_history(traj, sid)
    score = next(t for t in fig["data"] if t.get("name", "").startswith("layer"))
    np.testing.assert_allclose(decode(score["y"]).astype(float), expected.score, rtol=1e-6)
    np.testing.assert_allclose(
        decode(by_name["cut line (highest score removed)"]["y"]).astype(float), expected.cut, rtol=1e-6
    )
    assert "removed at step 3" in by_name
    at.select_slider[0].set_value(2).run()
    no_errors(at)
    assert chart(at, "Scores step 2 ranked").get("layout")
    stability = chart(at, "How stale a one-shot ranking gets")
    np.testing.assert_allclose(
        decode(stability["data"][0]["y"]).astype(float), explain.rank_stability(traj).spearman, rtol=1e-9
    )


def test_a_bad_structure_a_fixed_ranking_and_no_scores_are_said(runs):
    at = open_page("pages/2_Explore.py", select=runs["iterative"])
    name = Trajectory.load(runs["iterative"]).path.name
    at.number_input(key=f"explore_structure_index_{name}").set_value(999).run()
    assert not at.exception and any("outside" in e.value for e in at.error)
    at = open_page("pages/2_Explore.py", select=runs["oneshot"])
    no_errors(at)
    assert any("by construction" in i.value for i in at.info)
    at = open_page("pages/2_Explore.py", select=runs["bare"])
    no_errors(at)
    assert any("without every step's scores" in i.value for i in at.info)


def test_learn_shows_how_stale_the_dense_ranking_gets_on_an_example():
    from apptest import ROOT

    at = open_page("pages/7_Learn.py")
    no_errors(at)
    # the SmolLM2 iterative example first, when it has its scores; the Gemma example has had them from the start
    name = next(
        n
        for n in ("smollm2-135m-ppl-iterative", "gemma3-270m-ppl-iterative")
        if any(c.value.startswith(f"{n}: by step") for c in at.caption)
    )
    fig = chart(at, f"{name} · How stale")
    expected = explain.rank_stability(Trajectory.load(ROOT / "cache" / "examples" / name))
    np.testing.assert_allclose(decode(fig["data"][0]["y"]).astype(float), expected.spearman, rtol=1e-9)
    np.testing.assert_allclose(decode(fig["data"][1]["y"]).astype(float), expected.jaccard, rtol=1e-9)
    assert expected.jaccard[-1] < 0.95  # re-scoring changed what was removed
