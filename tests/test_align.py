"""Aligned MLP widths: ``gisp prune --align N`` (every step, nested, in the key only when set) and
``gisp export --align N`` (a point rounded in the trajectory's own order)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny import make_tiny_model

from gisp_engine import PruneConfig, prune
from gisp_engine.cli import main
from gisp_engine.core.errors import GispError
from gisp_engine.export.widths import aligned_keep_mask, uniform_widths
from gisp_engine.model.structures import StructureSpace
from gisp_engine.pruning import pruner
from gisp_engine.pruning.config import METHODS, target_ratios
from gisp_engine.pruning.methods._selection import GLOBAL, PARAM_BUDGET, PER_LAYER, Cut, aligned_count

WIDTH = 96  # MLP channels of the tiny model here: a multiple of 16 and 32, not of 64


@pytest.fixture(scope="module")
def tiny96(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny96") / "llama", intermediate=WIDTH)


def _cfg(folder, **kw) -> PruneConfig:
    base = dict(
        model=str(folder), num_samples=4, seq_len=32, steps=4, max_sparsity=0.4, protect_first=1, dtype="float32"
    )
    base.update(kw)
    return PruneConfig(**base)


def _channels(traj, step: int) -> np.ndarray:
    return traj.space.as_grid(traj.keep_mask(step))[1].sum(1)


def _survival(traj) -> np.ndarray:
    return np.where(traj.removal_step == -1, traj.num_steps + 1, traj.removal_step)


# ---- the rounding rule --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kept, cap, expected",
    [
        (96, 96, 96),
        (0, 96, 0),  # untouched, emptied: as they are
        (72, 96, 80),
        (71, 96, 64),
        (88, 96, 96),  # nearest multiple of 16, ties to the larger
        (3, 96, 16),
        (9, 64, 16),  # a layer left with channels keeps at least N
        (40, 48, 48),
        (39, 48, 32),
        (20, 48, 32),  # a full width of 48 (not a multiple of 32) is a count too
        (5, 12, 12),  # narrower than N: kept whole unless emptied
        (90, 80, 80),  # never above the cap
    ],
)
def test_aligned_count(kept, cap, expected):
    align = 32 if cap in (48, 12) else 16
    assert aligned_count(kept, align, cap) == expected


def test_align_one_leaves_every_selection_as_it_chose():
    rng = np.random.default_rng(0)
    from gisp_engine.model.adapters import Geometry

    space = StructureSpace(
        Geometry(num_layers=4, hidden_size=32, num_heads=4, num_kv_heads=2, head_dim=8, intermediate_size=WIDTH)
    )
    protected = np.isin(space.layer, [0, 3])
    scores = rng.random(space.size)
    keep = rng.random(space.size) > 0.1
    keep[protected] = True
    for selection in (GLOBAL, PARAM_BUDGET, PER_LAYER):
        cut = Cut(removed_total=int((~keep).sum()) + 50, ratio=0.3, layer_share=2.0)
        plain = selection.select(space, keep, protected, scores, cut)
        np.testing.assert_array_equal(selection.choose(space, keep, protected, scores, cut), plain)
        aligned = selection.choose(space, keep, protected, scores, Cut(cut.removed_total, 0.3, 2.0, align=16))
        after = keep.copy()
        after[aligned] = False
        assert keep[aligned].all() and not protected[aligned].any()  # only alive, unprotected structures go
        counts = space.as_grid(after)[1].sum(1)
        before = space.as_grid(keep)[1].sum(1)
        assert all(c == b or c % 16 == 0 for c, b in zip(counts, before))


# ---- in the trajectory ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_every_step_is_aligned_and_nested(tiny96, data_dir, method):
    align = 16
    traj = prune(_cfg(tiny96, method=method, align=align)).trajectory
    assert traj.meta["settings"]["align"] == align and traj.meta["request"]["align"] == align
    assert traj.meta["ranking"].endswith(f"rounded to the nearest multiple of {align} (methods.ALIGN_RULE)")
    space = traj.space
    size = space.size
    for t in range(1, traj.num_steps + 1):
        keep, before = traj.keep_mask(t), traj.keep_mask(t - 1)
        assert not (keep & ~before).any()  # nothing removed comes back
        assert all(c % align == 0 for c in _channels(traj, t)), _channels(traj, t)
        assert _channels(traj, t)[[0, 3]].tolist() == [WIDTH, WIDTH]  # protected layers untouched
        record = traj.steps[t]  # the loop records what the step reached, not the schedule's target
        assert record.structural_ratio == pytest.approx(1.0 - keep.mean())
        assert record.param_sparsity == pytest.approx(space.param_sparsity(keep))
        # each of the two cut layers is off by at most N channels from where the selection left it
        target = target_ratios("linear", 0.4, 4)[t - 1]
        if method == "flap":  # a parameter budget
            per_channel = 3 * space.geometry.hidden_size / space.total_linear_params()
            assert abs(record.param_sparsity - target) <= 2 * align * per_channel + 0.01
        else:
            assert abs(record.structural_ratio - target) <= 2 * align / size + 0.01
    if method in ("llm-pruner", "magnitude", "random", "wanda-sp"):  # the same ratio, so the same width, everywhere
        heads, channels = space.as_grid(traj.keep_mask(traj.num_steps))
        assert channels[1].sum() == channels[2].sum() and heads[1].sum() == heads[2].sum()


def test_a_full_width_that_is_not_a_multiple(tiny_llama, data_dir):
    traj = prune(_cfg(tiny_llama, align=32)).trajectory  # 48 channels per layer
    assert traj.geometry.intermediate_size == 48
    for t in range(traj.num_steps + 1):
        assert set(_channels(traj, t).tolist()) <= {48, 32, 0}
        if t:
            assert not (traj.keep_mask(t) & ~traj.keep_mask(t - 1)).any()
    assert set(_channels(traj, traj.num_steps)[[1, 2]].tolist()) <= {32, 0}


def test_without_align_the_trajectory_and_its_key_are_unchanged(tiny96, data_dir):
    plain = prune(_cfg(tiny96)).trajectory
    assert "align" not in plain.meta["request"] and plain.meta["settings"]["align"] is None
    one = prune(_cfg(tiny96, align=1), use_cache=False).trajectory  # 1 rounds nothing: the same key
    assert one.key == plain.key
    np.testing.assert_array_equal(one.removal_step, plain.removal_step)
    aligned = prune(_cfg(tiny96, align=16)).trajectory
    assert aligned.key != plain.key and aligned.key != pruner.plan(_cfg(tiny96, align=32)).key
    assert not np.array_equal(aligned.removal_step, plain.removal_step)


def test_the_shipped_examples_keep_their_keys(embedded_model_dir, data_dir):
    """The example trajectories were made before --align existed: their keys must not move."""
    root = Path(__file__).resolve().parents[1] / "cache" / "examples"
    checked = 0
    for folder in sorted(root.glob("smollm2-135m-ppl-*")):
        meta = json.loads((folder / "trajectory.json").read_text())
        fields = set(PruneConfig.__dataclass_fields__)
        settings = {k: v for k, v in meta["settings"].items() if k in fields}
        assert pruner.plan(PruneConfig(**settings)).key == meta["key"], folder.name
        checked += 1
    assert checked


def test_bad_align_is_refused_before_any_weight_loads(tiny96, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(pruner, "load_model", no_loading)
    for bad in (0, -64, 1.5, True, "64"):
        with pytest.raises(GispError, match="--align must be a whole number of at least 1"):
            prune(_cfg(tiny96, align=bad))
    with pytest.raises(GispError, match=r"--align 128 is wider than the model's MLP \(96 channels"):
        prune(_cfg(tiny96, align=128))


def test_cli_refuses_bad_align_with_exit_2(tiny96, tmp_path, capsys):
    common = ["--model", str(tiny96), "--num-samples", "4", "--seq-len", "32", "--steps", "2", "--quiet"]
    for bad in ("0", "512"):
        assert main(["prune", *common, "--align", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("gisp: error: --align")


# ---- at export -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def unaligned(tiny96, tmp_path_factory):
    from tiny import cache_dir

    with cache_dir(tmp_path_factory.mktemp("cache")):
        return prune(_cfg(tiny96, steps=6, max_sparsity=0.45)).trajectory


@pytest.mark.parametrize("align", [16, 32, 64])
def test_export_alignment_keeps_the_channels_removed_last(unaligned, align):
    traj, space = unaligned, unaligned.space
    survival = _survival(traj)
    for step in range(traj.num_steps + 1):
        point, keep = traj.keep_mask(step), aligned_keep_mask(traj, step, align)
        np.testing.assert_array_equal(keep[space.kind == 0], point[space.kind == 0])  # heads as they are
        for layer in range(space.geometry.num_layers):
            ids = np.arange(space.channel_slice(layer).start, space.channel_slice(layer).stop)
            kept, count = int(point[ids].sum()), int(keep[ids].sum())
            assert count == aligned_count(kept, align, WIDTH)
            assert count in (0, WIDTH) or count % align == 0
            if 0 < count < WIDTH:  # later removal is kept first
                assert survival[ids[keep[ids]]].min() >= survival[ids[~keep[ids]]].max()
            if count >= kept:
                assert keep[ids][point[ids]].all()
            else:
                assert not keep[ids][~point[ids]].any()


def test_aligned_and_uniform_exports_record_their_widths(unaligned, tiny96, tmp_path, capsys):
    from gisp_engine.export.hf import export_subnetwork, load_pruned
    from gisp_engine.model.loading import load_model

    step = 3
    result = export_subnetwork(
        load_model(str(tiny96), dtype="float32"), unaligned, step, tmp_path / "aligned", align=32
    )
    m = result.manifest
    sizes = [len(layer["channels"]) for layer in m["layers"]]
    assert m["align"]["multiple"] == 32 and m["align"]["intermediate_sizes"] == sizes
    assert all(s % 32 == 0 for s in sizes) and "nearest multiple" in m["align"]["rule"]
    keep = aligned_keep_mask(unaligned, step, 32)
    assert m["param_sparsity"] == pytest.approx(unaligned.space.param_sparsity(keep))
    assert result.summary()["align"] == 32
    load_pruned(tmp_path / "aligned")  # files, parameter count and widths check out against the manifest

    assert uniform_widths(unaligned, step, align=32).channels % 32 == 0
    uniform = export_subnetwork(
        load_model(str(tiny96), dtype="float32"), unaligned, step, tmp_path / "uniform", uniform=True, align=32
    )
    assert uniform.manifest["uniform"]["channels"] % 32 == 0

    # the CLI: --align passes through; bad N and --all-steps are refused with one line, nothing written
    path = str(unaligned.path)
    assert (
        main(
            [
                "export",
                "--trajectory",
                path,
                "--step",
                "2",
                "--out",
                str(tmp_path / "cli"),
                "--align",
                "64",
                "--quiet",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["align"] == 64
    for extra in (["--step", "2", "--align", "0"], ["--step", "2", "--align", "97"], ["--all-steps", "--align", "16"]):
        assert main(["export", "--trajectory", path, "--out", str(tmp_path / "bad"), "--quiet", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--align" in err[0]
        assert not (tmp_path / "bad").exists()
