"""Why a structure was removed (gisp_engine.explore.explain): histories, step scores and rank stability checked against
computations of their own (scipy's spearmanr, sets built by hand), the CLI forms, and attention patterns."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr
from tiny import cache_dir, make_tiny_model

from gisp_engine import PruneConfig, Trajectory, prune, rescore_along
from gisp_engine.cli import main
from gisp_engine.core.errors import GispError
from gisp_engine.explore import explain
from gisp_engine.model.loading import load_model
from gisp_engine.pruning.trajectory import decode_scores, encode_scores

EXAMPLES = Path(__file__).resolve().parents[1] / "cache" / "examples"
BASE = dict(num_samples=4, seq_len=32, protect_first=1, dtype="float32", batch_size=4, device="cpu")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("explain-models")
    return {
        "llama": make_tiny_model(root / "llama", "llama", gqa=True, seed=3),
        "gemma3": make_tiny_model(root / "gemma3", "gemma3", gqa=True, seed=4),
    }


@pytest.fixture(scope="module")
def runs(models, data_dir, tmp_path_factory) -> dict[str, Trajectory]:
    with cache_dir(tmp_path_factory.mktemp("explain-cache")):
        llama = str(models["llama"])
        return {
            "iterative": prune(PruneConfig(model=llama, steps=4, max_sparsity=0.5, **BASE)).trajectory,
            "oneshot": prune(PruneConfig(model=llama, steps=1, max_sparsity=0.5, **BASE)).trajectory,
            "fixed": prune(
                PruneConfig(model=llama, method="gisp-oneshot", steps=2, max_sparsity=0.5, **BASE)
            ).trajectory,
            "bare": prune(PruneConfig(model=llama, steps=1, max_sparsity=0.3, save_scores=False, **BASE)).trajectory,
        }


def loaded(traj: Trajectory) -> Trajectory:
    return Trajectory.load(traj.path)  # as stored: float16 scores


def test_scores_are_kept_by_default_as_float16_with_a_scale_per_step(runs):
    from safetensors.numpy import load_file

    traj = runs["iterative"]
    assert traj.meta["settings"]["save_scores"] is True and runs["bare"].scores is None
    arrays = load_file(str(Path(traj.path) / "structures.safetensors"))
    assert arrays["scores"].dtype == np.float16 and arrays["scores_scale"].shape == (traj.num_steps,)
    back = loaded(traj)
    finite = np.isfinite(traj.scores)
    np.testing.assert_array_equal(np.isfinite(back.scores), finite)
    np.testing.assert_allclose(back.scores[finite], traj.scores[finite], rtol=2**-11)
    # magnitudes far outside float16's own range keep 11 significant bits
    tiny = np.array([[1e-9, 3e-7, np.nan], [5e4, 1e6, 2.0]], np.float32)
    np.testing.assert_allclose(decode_scores(*encode_scores(tiny)), tiny, rtol=2**-11, equal_nan=True)


def test_structure_history_against_the_stored_arrays(runs):
    traj = loaded(runs["iterative"])
    scores, removal = traj.scores, traj.removal_step
    gone_early = int(np.flatnonzero(removal == 2)[0])
    layer, kind, index = traj.name(gone_early)
    h = explain.structure_history(traj, f"{layer}:{kind}:{index}")
    assert (h.layer, h.kind, h.index, h.removal_step) == (layer, kind, index, 2)
    for t in (1, 2):
        row = scores[t - 1]
        alive = np.isfinite(row)
        assert h.score[t - 1] == pytest.approx(row[gone_early])
        assert h.rank[t - 1] == 1 + int((row[alive] < row[gone_early]).sum())
        assert h.scored[t - 1] == int(alive.sum())
        assert h.cut[t - 1] == pytest.approx(row[removal == t].max())
    # removed at step 2: at or below that step's cut line, and never scored again
    assert h.score[1] <= h.cut[1] and np.isnan(h.score[2:]).all() and np.isnan(h.rank[2:]).all()
    rows = h.to_dict()["steps"]
    assert [r["removed_here"] for r in rows] == [t == 2 for t in range(1, traj.num_steps + 1)]
    protected = explain.structure_history(traj, "0:channel:3")
    assert protected.protected and np.isnan(protected.score).all()


@pytest.mark.parametrize(
    "spec, words",
    [
        ("9:head:0", "layer 9 is outside 0..3"),
        ("1:head:99", "head unit 99 is outside"),
        ("1:channel:-1", "channel -1 is outside"),
        ("1:neuron:0", "kind 'neuron' is not one of head, channel"),
        ("1:head", "write LAYER:KIND:INDEX"),
        ("a:head:1", "whole numbers"),
    ],
)
def test_a_structure_that_does_not_exist_is_one_line(runs, spec, words):
    with pytest.raises(GispError, match=words):
        explain.structure_history(runs["iterative"], spec)


def test_rank_stability_matches_scipy_and_sets_built_by_hand(runs):
    traj = loaded(runs["iterative"])
    result = explain.rank_stability(traj)
    assert not result.fixed and list(result.steps) == list(range(1, traj.num_steps + 1))
    dense = traj.scores[0]
    order = np.argsort(dense[np.isfinite(dense)], kind="stable")
    candidates = np.flatnonzero(np.isfinite(dense))[order]
    for t in result.steps:
        row = traj.scores[t - 1]
        present = np.isfinite(row)
        expected = spearmanr(row[present], dense[present]).statistic
        assert result.spearman[t - 1] == pytest.approx(expected, abs=1e-9)
        gone = set(np.flatnonzero((traj.removal_step > 0) & (traj.removal_step <= t)).tolist())
        would = set(candidates[: len(gone)].tolist())
        assert result.jaccard[t - 1] == pytest.approx(len(gone & would) / len(gone | would))
    assert result.spearman[0] == pytest.approx(1.0) and result.jaccard[0] == pytest.approx(1.0)
    assert result.spearman[1:].min() < 1.0  # a tiny random model's ranking moves once pruned


def test_rank_stability_of_a_fixed_ranking_is_said_not_drawn(runs):
    for name, words in (("oneshot", "one step"), ("fixed", "ranks once")):
        result = explain.rank_stability(loaded(runs[name]))
        assert result.fixed and words in result.reason and "by construction" in result.text()


def test_step_scores_and_their_cut_line(runs):
    traj = loaded(runs["iterative"])
    s = explain.step_scores(traj, 3)
    row = traj.scores[2]
    assert len(s.score) == int(np.isfinite(row).sum())
    assert s.cut == pytest.approx(row[traj.removal_step == 3].max())
    # the global ranking: everything removed at the step lies at or below the cut, everything kept at or above
    assert (s.score[s.removed_here] <= s.cut).all() and (s.score[~s.removed_here] >= s.cut).all()
    stats = s.per_layer(1)
    assert stats["count"].sum() == int((s.kind == 1).sum()) and (stats["q1"] <= stats["q3"]).all()
    for bad in (0, traj.num_steps + 1):
        with pytest.raises(GispError, match="scores exist for the pruning steps"):
            explain.step_scores(traj, bad)


def test_cli_info_structure_and_rank_stability(runs, capsys):
    traj = runs["iterative"]
    layer, kind, index = traj.name(int(np.flatnonzero(traj.removal_step == 1)[0]))
    assert main(["info", str(traj.path), "--structure", f"{layer}:{kind}:{index}"]) == 0
    out = capsys.readouterr().out
    assert f"structure {layer}:{kind}:{index}: removed at step 1" in out and "removed here" in out
    assert main(["info", str(traj.path), "--structure", f"{layer}:{kind}:{index}", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["removal_step"] == 1 and payload["steps"][0]["removed_here"] is True
    assert main(["info", str(traj.path), "--rank-stability", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [r["step"] for r in payload["steps"]] == list(range(1, traj.num_steps + 1))
    assert main(["info", str(traj.path), "--scores-at", "2", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    step2 = explain.step_scores(loaded(traj), 2)
    assert payload["removed"] == int((traj.removal_step == 2).sum()) and payload["cut_line"] == pytest.approx(step2.cut)
    assert sum(r["count"] for rows in payload["per_layer"].values() for r in rows) == len(step2.score)
    assert main(["info", str(runs["oneshot"].path), "--rank-stability"]) == 0
    assert "by construction" in capsys.readouterr().out
    for argv, words in (
        ([str(runs["bare"].path), "--rank-stability"], "without every step's scores"),
        ([str(traj.path), "--structure", "1:head:99"], "outside"),
        ([str(traj.path), "--scores-at", "0"], "scores exist for the pruning steps"),
    ):
        assert main(["info", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0]


def test_rescoring_along_a_run_gives_its_scores_and_follows_any_order_given(runs):
    traj = runs["iterative"]  # in memory: float32 scores as the run measured them
    again = rescore_along(traj, device="cpu", dtype="float32")
    np.testing.assert_array_equal(again.removal_step, traj.removal_step)
    np.testing.assert_array_equal(again.scores, traj.scores)
    assert again.meta["followed"]["agreement"] == [1.0] * traj.num_steps
    # another order: one structure removed at step 1 swapped with one the run kept (same kind, a scored layer)
    order = traj.removal_step.copy()
    first = np.flatnonzero(order == 1)
    out = first[0]
    kept = [
        i for i in np.flatnonzero(order == -1) if traj.space.kind[i] == traj.space.kind[out] and traj.space.layer[i] > 0
    ]
    order[out], order[kept[0]] = -1, 1
    foreign = dataclasses.replace(traj, removal_step=order)
    followed = rescore_along(foreign, device="cpu", dtype="float32")
    np.testing.assert_array_equal(followed.removal_step, order)
    assert followed.meta["followed"]["agreement"][0] == pytest.approx((len(first) - 1) / len(first))
    np.testing.assert_array_equal(followed.scores[0], traj.scores[0])  # the dense model's scores: the same
    assert np.isnan(followed.scores[1][kept[0]]) and np.isfinite(followed.scores[1][out])  # the other model after


@pytest.mark.parametrize("name", ["gemma3-270m-ppl-iterative", "smollm2-135m-ppl-iterative"])
def test_the_iterative_examples_drift_from_their_dense_ranking(name):
    traj = Trajectory.load(EXAMPLES / name)  # shipped with every step's scores
    result = explain.rank_stability(traj)
    assert not result.fixed and result.spearman[-1] < 0.9 and result.jaccard[-1] < 0.9
    if "scores_added" in traj.meta:  # measured again along its own order: step 1 nearly, not exactly, the dense pick
        assert 0.99 < result.jaccard[0] < 1 and "measured again" in result.notes[0]


@pytest.mark.parametrize(
    "name",
    [
        "smollm2-135m-ppl-iterative",
        "smollm2-135m-ppl-oneshot",
        "smollm2-135m-tasks-margin",
        "gemma3-270m-ppl-iterative",
    ],
)
def test_an_examples_scores_are_those_its_steps_cut_by(name):
    """At every step the structures removed are the lowest that step scored (99.9% for a run that kept its scores:
    float16 storage ties a few near the cut; 99% for scores measured again along an older engine's order, where
    near-ties fell the other way)."""
    traj = Trajectory.load(EXAMPLES / name)
    assert traj.scores is not None and traj.scores.shape == (traj.num_steps, traj.space.size)
    floor = 0.99 if "scores_added" in traj.meta else 0.999
    for t in range(1, traj.num_steps + 1):
        row = traj.scores[t - 1]
        scored = np.flatnonzero(np.isfinite(row))
        removed = np.flatnonzero(traj.removal_step == t)
        assert np.isin(removed, scored).all(), "a structure removed at a step was scored by it"
        lowest = scored[np.argsort(row[scored], kind="stable")[: len(removed)]]
        assert len(np.intersect1d(lowest, removed)) / len(removed) >= floor


# ---- attention ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_attention_patterns_dense_and_at_a_step(models, runs, family, data_dir):
    model = load_model(str(models[family]), device="cpu", dtype="float32")
    implementation = model.model.config._attn_implementation
    dense = explain.attention_patterns(model, "one two three four five six")
    g = model.geometry
    n = len(dense.tokens)
    assert dense.weights.shape == (g.num_layers, g.num_heads, n, n)
    np.testing.assert_allclose(dense.weights.sum(-1), 1.0, atol=1e-5)  # each query's weights sum to one
    assert np.allclose(np.triu(dense.weights, 1), 0.0)  # causal
    assert model.model.config._attn_implementation == implementation  # the caller's model is left as it was
    # a KV group's pattern is the mean of its query heads
    group = g.num_heads // g.num_kv_heads
    np.testing.assert_allclose(dense.head(1, 0, "kv-group", group), dense.weights[1, :group].mean(0), rtol=1e-6)
    if family == "llama":
        traj = runs["iterative"]
        step = traj.num_steps
        at = explain.attention_patterns(model, "one two three four five six", traj, step)
        q_keep, _ = traj.space.head_and_kv_keep(traj.keep_mask(step))
        for layer in range(g.num_layers):
            assert at.kept_heads[layer] == tuple(np.flatnonzero(q_keep[layer]))
        # protected layer 0 is the same model in both: the same pattern
        np.testing.assert_allclose(at.weights[0], dense.weights[0], atol=1e-6)
        # the hooks give the masked model's patterns for every head the step keeps
        import copy
        import dataclasses

        from gisp_engine.pruning.subnetwork import apply_step

        masked = dataclasses.replace(model, model=copy.deepcopy(model.model))
        apply_step(masked, traj, step, physical=False)
        reference = explain.attention_patterns(masked, "one two three four five six")
        for layer in range(g.num_layers):
            heads = list(at.kept_heads[layer])
            np.testing.assert_allclose(at.weights[layer, heads], reference.weights[layer, heads], atol=1e-5)
        assert not np.allclose(at.weights[-1], dense.weights[-1], atol=1e-4)  # the pruned layers below changed it
        # and the caller's model computes the dense patterns again afterwards (the hooks are gone)
        np.testing.assert_allclose(
            explain.attention_patterns(model, "one two three four five six").weights, dense.weights, atol=1e-6
        )


def test_attention_refuses_empty_and_long_texts(models):
    model = load_model(str(models["llama"]), device="cpu", dtype="float32")
    with pytest.raises(GispError, match="the text is empty"):
        explain.attention_patterns(model, "   ")
    with pytest.raises(GispError, match="at most 64 tokens"):
        explain.attention_patterns(model, " ".join(["word"] * 200))
