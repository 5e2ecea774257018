"""The iterative loop: nested masks, protection, exact accounting, slicing == masking, cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from needs import require
from tiny import cache_dir

from gisp_engine import PruneConfig, Trajectory, apply_step, load_model, prune
from gisp_engine.model.surgery import NullAttention, linear_weight_count
from gisp_engine.pruning import pruner
from gisp_engine.pruning.config import target_ratios


def _config(folder, **kw) -> PruneConfig:
    base = dict(
        model=str(folder),
        num_samples=4,
        seq_len=32,
        steps=5,
        max_sparsity=0.45,
        protect_first=1,
        dtype="float32",
        batch_size=2,
    )
    base.update(kw)
    return PruneConfig(**base)


@pytest.fixture(scope="module")
def llama_run(tiny_models, data_dir, tmp_path_factory):
    with cache_dir(tmp_path_factory.mktemp("cache")):  # restores an outer value, as del would not
        return prune(_config(tiny_models[("llama", True)], save_scores=True)).trajectory


def test_masks_are_nested_and_follow_the_schedule(llama_run):
    traj = llama_run
    n = traj.space.size
    targets = [round(r * n) for r in target_ratios("linear", 0.45, 5)]
    previous = traj.keep_mask(0)
    assert previous.all()
    for t in range(1, traj.num_steps + 1):
        keep = traj.keep_mask(t)
        assert not (keep & ~previous).any(), "a removed structure came back"
        assert int((~keep).sum()) == targets[t - 1]
        assert traj.steps[t].structural_ratio == pytest.approx(targets[t - 1] / n)
        previous = keep
    sparsities = [r.param_sparsity for r in traj.steps]
    assert sparsities == sorted(sparsities) and sparsities[0] == 0.0 and sparsities[-1] > 0.2


def test_protected_layers_are_never_pruned(llama_run):
    traj = llama_run
    protected = traj.meta["settings"]["protected_layers"]
    assert protected == [0, 3]
    assert (traj.removal_step[np.isin(traj.space.layer, protected)] == -1).all()
    assert np.isnan(traj.scores[:, np.isin(traj.space.layer, protected)]).all()


def test_sparsity_queries(llama_run):
    traj = llama_run
    for rec in traj.steps:
        assert traj.step_at_sparsity(rec.param_sparsity) == rec.step
    mid = (traj.steps[2].param_sparsity + traj.steps[3].param_sparsity) / 2
    assert traj.step_at_sparsity(mid) == 2
    kept = traj.kept(3)
    assert len(kept["layers"]) == 4 and kept["param_sparsity"] == traj.steps[3].param_sparsity


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
@pytest.mark.parametrize("gqa_model", [True, False], ids=["gqa", "mha"])
@pytest.mark.parametrize("policy", ["query", "kv-group"])
def test_shrinking_equals_masking(tiny_models, data_dir, family, gqa_model, policy):
    """Same scores, same trajectory, same logits and exact parameter counts at every step."""
    folder = tiny_models[(family, gqa_model)]
    runs = [
        prune(_config(folder, gqa=policy, shrink=s, save_scores=True), use_cache=False).trajectory
        for s in (True, False)
    ]
    sliced_run, masked_run = runs
    np.testing.assert_array_equal(sliced_run.removal_step, masked_run.removal_step)
    np.testing.assert_allclose(sliced_run.scores, masked_run.scores, rtol=1e-4, equal_nan=True)
    assert [r.loss for r in sliced_run.steps] == pytest.approx([r.loss for r in masked_run.steps], rel=1e-5)

    x = torch.randint(0, 300, (2, 24))
    for step in range(sliced_run.num_steps + 1):
        sliced, masked = load_model(str(folder), dtype="float32"), load_model(str(folder), dtype="float32")
        apply_step(sliced, sliced_run, step, physical=True)
        apply_step(masked, sliced_run, step, physical=False)
        with torch.no_grad():
            a, b = sliced.model(x).logits, masked.model(x).logits
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        assert linear_weight_count(sliced.model, sliced.adapter) == sliced_run.steps[step].kept_params


def test_fully_pruned_attention_and_uneven_groups_generate(tiny_llama, data_dir):
    """A layer with no heads left, and kept query heads in unequal KV groups, still decode with a cache."""
    traj = prune(_config(tiny_llama, max_sparsity=0.5, protect_first=0, protect_last=0, steps=3)).trajectory
    space = traj.space
    removal = np.full(space.size, -1, np.int32)
    removal[space.head_slice(1)] = 1  # layer 1 loses every head
    removal[space.id(2, "head", 0)] = 1  # layer 2 keeps heads 1,2,3: groups of 1 and 2 -> expanded K/V
    removal[space.channel_slice(3).start : space.channel_slice(3).start + 10] = 1
    custom = Trajectory(dict(traj.meta), traj.geometry, traj.gqa, removal, traj.score, traj.steps[:2])
    custom.steps[1].param_sparsity = space.param_sparsity(removal == -1)
    custom.steps[1].kept_params = int(space.linear_params_per_layer(removal == -1).sum())

    sliced, masked = load_model(str(tiny_llama), dtype="float32"), load_model(str(tiny_llama), dtype="float32")
    apply_step(sliced, custom, 1, physical=True)
    apply_step(masked, custom, 1, physical=False)
    assert isinstance(sliced.adapter.layers(sliced.model)[1].self_attn, NullAttention)
    assert sliced.adapter.layers(sliced.model)[2].self_attn.num_key_value_groups == 1
    x = torch.randint(0, 300, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(sliced.model(x).logits, masked.model(x).logits, rtol=1e-4, atol=1e-4)
        out_sliced = sliced.model.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=0)
        out_masked = masked.model.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(out_sliced, out_masked)
    assert linear_weight_count(sliced.model, sliced.adapter) == custom.steps[1].kept_params


def test_one_shot_and_cosine(tiny_llama, data_dir):
    one = prune(_config(tiny_llama, steps=1)).trajectory
    assert one.num_steps == 1 and set(np.unique(one.removal_step)) == {-1, 1}
    cos = prune(_config(tiny_llama, schedule="cosine", steps=4)).trajectory
    removed = [int((~cos.keep_mask(t)).sum()) for t in range(5)]
    increments = np.diff(removed)
    assert increments[0] < increments[1] and increments[-1] < increments[-2]  # slow start, slow end


def test_repeated_request_is_a_cache_hit(tiny_llama, data_dir, tmp_path, monkeypatch):
    first = prune(_config(tiny_llama))
    assert not first.cache_hit and first.path.is_dir()

    def not_on_a_hit(*args, **kwargs):
        raise AssertionError("a cache hit loads no model and runs no step")

    with monkeypatch.context() as m:
        m.setattr(pruner, "load_model", not_on_a_hit)
        m.setattr(pruner, "run_gisp", not_on_a_hit)
        second = prune(_config(tiny_llama), out=tmp_path / "copy")
    assert second.cache_hit and second.trajectory.meta["key"] == first.trajectory.meta["key"]
    np.testing.assert_array_equal(first.trajectory.removal_step, second.trajectory.removal_step)
    copy = Trajectory.load(tmp_path / "copy")
    np.testing.assert_array_equal(copy.removal_step, first.trajectory.removal_step)
    # a setting that changes the result is a different entry; one that does not (shrink) is not
    assert not prune(_config(tiny_llama, seed=1)).cache_hit
    assert prune(_config(tiny_llama, shrink=False)).cache_hit


def test_trajectory_round_trip_and_metadata(llama_run, tmp_path):
    folder = llama_run.save(tmp_path / "t")
    back = Trajectory.load(folder)
    np.testing.assert_array_equal(back.removal_step, llama_run.removal_step)
    np.testing.assert_array_equal(back.score, llama_run.score)
    # every step's scores are stored as float16 (with a power-of-two scale per step): 11 significant bits
    np.testing.assert_allclose(back.scores, llama_run.scores, rtol=2**-11, atol=0)
    assert back.scores.dtype == np.float32
    meta = back.meta
    for key in ("model", "settings", "objective", "versions", "wall_time_s", "created", "key"):
        assert key in meta
    assert len(meta["model"]["weights_sha256"]) == 64
    calib = meta["objective"]["calibration"]
    assert calib["num_samples"] == 4 and calib["seq_len"] == 32 and calib["documents_used"]
    assert not list(tmp_path.glob(".tmp-*")), "staging folders must not be left behind"


def test_device_map_auto_gives_the_same_trajectory(tiny_llama, data_dir):
    """accelerate's device_map path (on this CPU-only machine everything lands on the CPU)."""
    plain = prune(_config(tiny_llama), use_cache=False).trajectory
    mapped = prune(_config(tiny_llama, device_map="auto"), use_cache=False).trajectory
    np.testing.assert_array_equal(plain.removal_step, mapped.removal_step)


def test_the_default_models_examples_are_offered_first():
    """On a fresh machine (empty cache) the pickers open on an example of the embedded default model."""
    from gisp_engine.core import settings
    from gisp_engine.explore import view as explore

    rows = explore.available_trajectories()
    examples = [r for r in rows if r["source"] == "example"]
    if len({r["model"] for r in examples}) < 2:
        require("the repository's examples of two models")
    assert rows[0]["source"] == "example" and rows[0]["model"] == settings.DEFAULT_MODEL
    models = [r["model"] == settings.DEFAULT_MODEL for r in examples]
    assert models == sorted(models, reverse=True)  # every default-model example before any other
    assert [r["name"] for r in examples if r["model"] == settings.DEFAULT_MODEL] == sorted(
        r["name"] for r in examples if r["model"] == settings.DEFAULT_MODEL
    )
