"""Baselines on the same machinery: fixed rankings, per-layer or global selection, equal to their definitions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gisp_engine import PruneConfig, load_model, prune
from gisp_engine.model.structures import StructureSpace
from gisp_engine.pruning import methods
from gisp_engine.pruning.config import METHODS
from gisp_engine.pruning.objectives import objective_spec


def fixed_scores(method, model, adapter, space, objective, scored_layers, divisors, seed):
    """A method's scores of the dense model, and its extras, through the interface the loop calls."""
    assert not methods.get(method).rescores
    scores = methods.get(method).scores(
        methods.Scoring(model, adapter, space, objective, scored_layers, divisors, seed)
    )
    return scores.values, scores.extras


def _cfg(folder, **kw):
    base = dict(
        model=str(folder), num_samples=4, seq_len=32, steps=4, max_sparsity=0.4, protect_first=1, dtype="float32"
    )
    base.update(kw)
    return PruneConfig(**base)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "gisp"])
def test_every_baseline_is_a_nested_fixed_ranking(tiny_llama, data_dir, method):
    traj = prune(_cfg(tiny_llama, method=method)).trajectory
    assert traj.meta["method"] == method and traj.meta["ranking"].startswith("fixed ranking")
    space, scores = traj.space, traj.score
    for t in range(1, traj.num_steps + 1):
        assert not (traj.keep_mask(t) & ~traj.keep_mask(t - 1)).any()
        removed, kept = ~traj.keep_mask(t), traj.keep_mask(t) & ~np.isin(space.layer, [0, 3])
        groups = (
            [np.ones(space.size, bool)]
            if method in ("flap", "gisp-oneshot")
            else [(space.layer == i) & (space.kind == k) for i in (1, 2) for k in (0, 1)]
        )
        for group in groups:  # within what competes, everything removed scored at most what is kept
            if (removed & group).any() and (kept & group).any():
                assert scores[removed & group].max() <= scores[kept & group].min()
    if method == "flap":  # FLAP cuts to a parameter budget: the schedule is read as parameter sparsity
        assert traj.steps[-1].param_sparsity == pytest.approx(0.4, abs=0.02)
    else:
        assert traj.steps[-1].structural_ratio == pytest.approx(0.4, abs=0.02)


def test_per_layer_methods_cut_every_layer_alike(tiny_llama, data_dir):
    traj = prune(_cfg(tiny_llama, method="wanda-sp")).trajectory
    heads, channels = traj.space.as_grid(traj.keep_mask(traj.num_steps))
    assert heads[1].sum() == heads[2].sum() and channels[1].sum() == channels[2].sum()
    assert heads[0].all() and channels[3].all()


def test_oneshot_prefix_equals_single_step_runs(tiny_llama, data_dir):
    oneshot = prune(_cfg(tiny_llama, method="gisp-oneshot")).trajectory
    for t, ratio in ((2, 0.2), (4, 0.4)):
        single = prune(_cfg(tiny_llama, steps=1, max_sparsity=ratio)).trajectory
        np.testing.assert_array_equal(oneshot.keep_mask(t), single.keep_mask(1))


def test_scores_match_their_definitions(tiny_llama, data_dir):
    loaded = load_model(str(tiny_llama), dtype="float32")
    objective = objective_spec("perplexity").build(loaded, _cfg(tiny_llama))
    space = StructureSpace(loaded.geometry, "query")
    divisors = space.divisors("param-count")
    layer = loaded.adapter.layers(loaded.model)[2]
    attn, mlp = loaded.adapter.attention(layer), loaded.adapter.mlp(layer)
    dh = loaded.geometry.head_dim

    captured = {}
    hooks = [
        attn.o.register_forward_pre_hook(lambda m, i: captured.setdefault("o", []).append(i[0].detach())),
        mlp.down.register_forward_pre_hook(lambda m, i: captured.setdefault("down", []).append(i[0].detach())),
    ]
    with torch.no_grad():
        for batch in objective.batches():
            objective.loss(loaded.model, batch)
    for h in hooks:
        h.remove()
    x_o = torch.cat([x.reshape(-1, x.shape[-1]) for x in captured["o"]]).double()
    x_down = torch.cat([x.reshape(-1, x.shape[-1]) for x in captured["down"]]).double()

    wanda = fixed_scores("wanda-sp", loaded.model, loaded.adapter, space, objective, [2], divisors, 0)[0]
    w_o, w_down = attn.o.weight.detach().double(), mlp.down.weight.detach().double()
    head1 = (w_o[:, dh : 2 * dh].abs() * x_o[:, dh : 2 * dh].norm(dim=0)).sum()
    assert wanda[space.id(2, "head", 1)] == pytest.approx(float(head1), rel=1e-6)
    ch5 = (w_down[:, 5].abs() * x_down[:, 5].norm()).sum()
    assert wanda[space.id(2, "channel", 5)] == pytest.approx(float(ch5), rel=1e-6)
    assert np.isnan(wanda[space.layer == 1]).all()

    magnitude = fixed_scores("magnitude", loaded.model, loaded.adapter, space, objective, [2], divisors, 0)[0]
    expected = torch.cat([mlp.gate.weight[7], mlp.up.weight[7], mlp.down.weight[:, 7]]).detach().norm()
    assert magnitude[space.id(2, "channel", 7)] == pytest.approx(float(expected), rel=1e-5)

    # FLAP (reference lib/prune.py, WIFV, AL-AM): o_proj column metric Var(x)·‖W_col‖², squared, z-scored over
    # the layer's columns (std with n - 1), a head is the mean of its columns; channels z-scored per layer
    flap = fixed_scores("flap", loaded.model, loaded.adapter, space, objective, [1, 2], divisors, 0)[0]
    z = lambda v: (v - v.mean()) / v.std(unbiased=True)  # noqa: E731
    attn_cols = z((x_o.var(0, unbiased=True) * w_o.pow(2).sum(0)) ** 2)
    for head in range(loaded.geometry.num_heads):
        expected = attn_cols[head * dh : (head + 1) * dh].mean()
        assert flap[space.id(2, "head", head)] == pytest.approx(float(expected), rel=1e-6, abs=1e-9)
    channels = z(x_down.var(0, unbiased=True) * w_down.pow(2).sum(0))
    np.testing.assert_allclose(flap[space.channel_slice(2)], channels.numpy(), rtol=1e-6, atol=1e-9)
    assert np.isnan(flap[space.layer == 0]).all()
    # under kv-group a unit (KV head with its query heads) is the mean over all of the group's columns
    groups = StructureSpace(loaded.geometry, "kv-group")
    flap_kv = fixed_scores(
        "flap", loaded.model, loaded.adapter, groups, objective, [2], groups.divisors("param-count"), 0
    )[0]
    width = loaded.geometry.group_size * dh
    assert flap_kv[groups.id(2, "head", 1)] == pytest.approx(float(attn_cols[width : 2 * width].mean()), rel=1e-6)

    r0 = fixed_scores("random", loaded.model, loaded.adapter, space, objective, [2], divisors, 0)[0]
    r1 = fixed_scores("random", loaded.model, loaded.adapter, space, objective, [2], divisors, 1)[0]
    assert np.array_equal(
        r0, fixed_scores("random", loaded.model, loaded.adapter, space, objective, [2], divisors, 0)[0], equal_nan=True
    ) and not np.array_equal(r0, r1, equal_nan=True)


def test_flap_cuts_to_a_parameter_budget(tiny_llama, data_dir):
    """Every step removes the prefix of the one global ranking whose parameter sparsity is nearest the target."""
    traj = prune(_cfg(tiny_llama, method="flap", steps=3, max_sparsity=0.45)).trajectory
    space, scores = traj.space, traj.score
    candidates = np.flatnonzero(~np.isin(space.layer, [0]))
    ranked = candidates[np.lexsort((candidates, scores[candidates]))]
    for t, target in zip((1, 2, 3), (0.15, 0.30, 0.45)):
        removed = int((~traj.keep_mask(t)).sum())
        assert np.array_equal(np.sort(ranked[:removed]), np.flatnonzero(~traj.keep_mask(t)))

        def sparsity(n):
            keep = np.ones(space.size, bool)
            keep[ranked[:n]] = False
            return space.param_sparsity(keep)

        assert sparsity(removed) == pytest.approx(traj.steps[t].param_sparsity)
        # no other prefix is nearer the budget (heads and channels free different numbers of weights)
        assert all(abs(sparsity(removed) - target) <= abs(sparsity(n) - target) + 1e-12 for n in range(len(ranked) + 1))
    heads, _ = space.as_grid(~traj.keep_mask(3))
    assert heads.sum() > 0  # heads compete with channels in the same ranking


def test_flap_bias_compensation(tiny_llama, data_dir):
    """Compensation adds W[:, removed] @ mean_input: by hand, sliced == masked, on by default for FLAP."""
    from gisp_engine import GispError, apply_step

    traj = prune(_cfg(tiny_llama, method="flap")).trajectory
    assert traj.extras["input_mean_o"].shape == (4, 32) and traj.extras["input_mean_down"].shape == (4, 48)

    # the calibration input means, by hand, and the biases they give at step 3
    dense = load_model(str(tiny_llama), dtype="float32")
    objective = objective_spec("perplexity").build(dense, _cfg(tiny_llama))
    layer = dense.adapter.layers(dense.model)[2]
    o, down = dense.adapter.attention(layer).o, dense.adapter.mlp(layer).down
    captured = {}
    hooks = [
        o.register_forward_pre_hook(lambda m, i: captured.setdefault("o", []).append(i[0].detach())),
        down.register_forward_pre_hook(lambda m, i: captured.setdefault("down", []).append(i[0].detach())),
    ]
    with torch.no_grad():
        for batch in objective.batches():
            objective.loss(dense.model, batch)
    for h in hooks:
        h.remove()
    mean_o = torch.cat([x.reshape(-1, x.shape[-1]) for x in captured["o"]]).double().mean(0)
    mean_down = torch.cat([x.reshape(-1, x.shape[-1]) for x in captured["down"]]).double().mean(0)
    np.testing.assert_allclose(traj.extras["input_mean_o"][2], mean_o.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(traj.extras["input_mean_down"][2], mean_down.numpy(), rtol=1e-5, atol=1e-6)
    q_keep, _ = traj.space.head_and_kv_keep(traj.keep_mask(3))
    _, ch_keep = traj.space.as_grid(traj.keep_mask(3))
    removed_cols = torch.as_tensor(np.repeat(~q_keep[2], 8))
    removed_ch = torch.as_tensor(~ch_keep[2])
    assert removed_cols.any() and removed_ch.any()
    expected_o = o.weight.double()[:, removed_cols] @ mean_o[removed_cols]
    expected_down = down.weight.double()[:, removed_ch] @ mean_down[removed_ch]

    pruned = load_model(str(tiny_llama), dtype="float32")
    apply_step(pruned, traj, 3)  # FLAP's compensation is on by default, as published
    layer = pruned.adapter.layers(pruned.model)[2]
    torch.testing.assert_close(pruned.adapter.attention(layer).o.bias.double(), expected_o, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pruned.adapter.mlp(layer).down.bias.double(), expected_down, rtol=1e-4, atol=1e-5)
    x = torch.randint(0, 300, (2, 16))
    logits = {}
    for name, physical, comp in (("sliced", True, True), ("masked", False, True), ("plain", True, False)):
        loaded = load_model(str(tiny_llama), dtype="float32")
        apply_step(loaded, traj, 3, physical=physical, bias_compensation=comp)
        with torch.no_grad():
            logits[name] = loaded.model(x).logits
    torch.testing.assert_close(logits["sliced"], logits["masked"], rtol=1e-4, atol=1e-4)
    assert (logits["sliced"] - logits["plain"]).abs().max() > 1e-3
    gisp = prune(_cfg(tiny_llama)).trajectory
    with pytest.raises(GispError, match="needs a FLAP trajectory"):
        apply_step(load_model(str(tiny_llama)), gisp, 1, bias_compensation=True)


NEW_METHOD = """
from ._base import Scores
from .magnitude import Magnitude


class ReverseMagnitude(Magnitude):
    name = "reverse-magnitude"

    def scores(self, scoring):
        return Scores(-super().scores(scoring).values)


METHOD = ReverseMagnitude()
"""


def test_a_new_method_is_one_file(tmp_path, tiny_llama, data_dir, capsys):
    """One module dropped into gisp_engine/pruning/methods is a method: config, CLI and loop take it, nothing else
    changes."""
    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "gisp_engine", tmp_path / "gisp_engine", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "gisp_engine" / "pruning" / "methods" / "reverse_magnitude.py").write_text(NEW_METHOD)
    out = tmp_path / "reverse"
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gisp_engine.cli",
            "prune",
            "--model",
            str(tiny_llama),
            "--method",
            "reverse-magnitude",
            "--num-samples",
            "4",
            "--seq-len",
            "32",
            "--steps",
            "4",
            "--max-sparsity",
            "0.4",
            "--protect-first",
            "1",
            "--dtype",
            "float32",
            "--out",
            str(out),
            "--json",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    from gisp_engine.pruning.trajectory import Trajectory

    reverse = Trajectory.load(out)
    assert reverse.meta["ranking"].startswith("fixed ranking (reverse-magnitude)") and json.loads(done.stdout)
    magnitude = prune(_cfg(tiny_llama, method="magnitude")).trajectory
    scored = ~np.isnan(magnitude.score)
    np.testing.assert_array_equal(reverse.score[scored], -magnitude.score[scored])
    space = reverse.space
    for t in (1, 4):  # the same per-layer cut from the other end: in every layer the largest structures go first
        removed, kept = ~reverse.keep_mask(t) & scored, reverse.keep_mask(t) & scored
        for group in [(space.layer == i) & (space.kind == k) for i in (1, 2) for k in (0, 1)]:
            if (removed & group).any() and (kept & group).any():
                assert magnitude.score[removed & group].min() >= magnitude.score[kept & group].max()
        assert removed.sum() == (~magnitude.keep_mask(t) & scored).sum()
        assert not np.array_equal(reverse.keep_mask(t), magnitude.keep_mask(t))
    from gisp_engine.cli import main

    capsys.readouterr()
    assert main(["prune", "--method", "reverse-magnitude"]) == 2  # in this tree, without the file: refused
    err = capsys.readouterr().err
    assert "invalid choice: 'reverse-magnitude'" in err and len(err.splitlines()) == 1, err
