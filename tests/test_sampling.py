"""The window sampler (the reference loaders' calibration): seeded, inside documents, rebuildable, keyed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from gisp_engine import PruneConfig, prune
from gisp_engine.core.errors import GispError
from gisp_engine.data.text import (
    DOCUMENTS_PER_WINDOW,
    build_calibration,
    load_documents,
    rebuild_calibration,
    resolve_text_source,
)
from gisp_engine.pruning.pruner import plan

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the river ran past an old mill where seven grey stones lay under moss and quiet water".split()


@pytest.fixture(scope="module")
def tok(tiny_llama):
    return AutoTokenizer.from_pretrained(str(tiny_llama))


def _write_docs(path, docs: list[str]):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def _long_docs(n: int, words: int = 60) -> list[str]:
    # documents that differ from each other, so a window identifies where it came from
    return [
        f"document {i}: " + " ".join(WORDS[(i * 7 + j) % len(WORDS)] + str(j % 11) for j in range(words))
        for i in range(n)
    ]


def _source(path):
    return resolve_text_source(str(path))


def test_window_sampling_is_seeded(tok, tmp_path):
    source = _source(_write_docs(tmp_path / "long.jsonl", _long_docs(60)))
    a = build_calibration(tok, source, 4, 16, seed=3, sampling="window")
    b = build_calibration(tok, source, 4, 16, seed=3, sampling="window")
    c = build_calibration(tok, source, 4, 16, seed=4, sampling="window")
    assert a.input_ids.shape == (4, 16) and a.input_ids.dtype == torch.long
    assert torch.equal(a.input_ids, b.input_ids) and a.describe() == b.describe()
    assert not torch.equal(a.input_ids, c.input_ids)
    assert a.describe()["sampling"] == "window" and a.describe()["seed"] == 3


def test_every_window_lies_inside_one_long_document(tok, tmp_path):
    docs = _long_docs(50) + ["short one"] * 30  # short documents are never drawn
    source = _source(_write_docs(tmp_path / "mixed.jsonl", docs))
    cal = build_calibration(tok, source, 5, 16, seed=0, sampling="window")
    described = cal.describe()
    assert described["mode"] == "documents"
    for row, doc, start in zip(cal.input_ids.tolist(), described["window_documents"], described["window_starts"]):
        ids = tok(docs[doc], add_special_tokens=False)["input_ids"]
        assert len(ids) > 16 and 0 <= start and start + 16 < len(ids)  # the reference's range
        assert row == ids[start : start + 16]
    assert described["documents_used"] == sorted(set(described["window_documents"]))


def test_short_documents_are_joined_and_said_so(tok, tmp_path):
    docs = [f"line {i} " + " ".join(WORDS[i % 5 : i % 5 + 4]) for i in range(40)]
    source = _source(_write_docs(tmp_path / "short.jsonl", docs))
    cal = build_calibration(tok, source, 3, 24, seed=1, sampling="window")
    described = cal.describe()
    assert described["mode"] == "stream" and "windows of the joined documents" in described["note"]
    assert "window_documents" not in described
    assert all(len(doc) < 24 for doc in tok(docs, add_special_tokens=False)["input_ids"])
    # each window spans several documents, which the record names
    assert len(described["documents_used"]) > 3


def test_too_few_long_documents_fall_back_to_the_stream(tok, tmp_path):
    # fewer long documents than DOCUMENTS_PER_WINDOW x num_samples: windows of the stream instead
    docs = _long_docs(DOCUMENTS_PER_WINDOW * 2 - 1) + ["short"] * 20
    cal = build_calibration(tok, _source(_write_docs(tmp_path / "few.jsonl", docs)), 2, 16, 0, "window")
    assert cal.mode == "stream"
    docs = _long_docs(DOCUMENTS_PER_WINDOW * 2) + ["short"] * 20
    cal = build_calibration(tok, _source(_write_docs(tmp_path / "enough.jsonl", docs)), 2, 16, 0, "window")
    assert cal.mode == "documents"


@pytest.mark.parametrize("docs", [_long_docs(40), ["tiny bit of text"] * 40], ids=["documents", "stream"])
def test_recorded_offsets_rebuild_the_same_tensor(tok, tmp_path, docs):
    path = _write_docs(tmp_path / "src.jsonl", docs)
    cal = build_calibration(tok, _source(path), 4, 16, seed=7, sampling="window")
    described = json.loads(json.dumps(cal.describe()))  # as the trajectory stores it
    assert torch.equal(rebuild_calibration(tok, described), cal.input_ids)
    # the rebuild reads the offsets, not the seed
    assert torch.equal(rebuild_calibration(tok, {**described, "seed": 99}), cal.input_ids)
    path.write_text(path.read_text() + json.dumps({"text": "changed"}) + "\n")
    with pytest.raises(GispError, match="not the data the trajectory recorded"):
        rebuild_calibration(tok, described)


def test_packed_is_still_the_old_packing(tok, tmp_path):
    source = _source(_write_docs(tmp_path / "src.jsonl", _long_docs(30)))
    cal = build_calibration(tok, source, 3, 16, seed=2)
    assert cal.describe()["sampling"] == "packed"
    assert torch.equal(rebuild_calibration(tok, cal.describe()), cal.input_ids)
    docs = load_documents(source)
    first = tok(docs[cal.documents_used[0]], add_special_tokens=False)["input_ids"]
    assert cal.input_ids[0].tolist() == first[:16]


def test_a_source_shorter_than_one_window_is_refused(tok, tmp_path):
    source = _source(_write_docs(tmp_path / "tiny.jsonl", ["a few words", "and a few more"]))
    with pytest.raises(GispError, match="not more than one window of 64"):
        build_calibration(tok, source, 2, 64, seed=0, sampling="window")
    with pytest.raises(GispError, match="unknown sampling 'random'"):
        build_calibration(tok, source, 2, 4, seed=0, sampling="random")


def test_cache_key_changes_with_the_sampler_and_keeps_old_keys(tiny_llama, data_dir):
    base = dict(model=str(tiny_llama), num_samples=4, seq_len=32, steps=2, protect_first=1, dtype="float32")
    packed, window = plan(PruneConfig(sampling="packed", **base)), plan(PruneConfig(sampling="window", **base))
    assert packed.key != window.key
    # packed leaves the request as it was before the setting existed, so older cache entries still answer
    assert "sampling" not in packed.request["objective"] and window.request["objective"]["sampling"] == "window"
    with pytest.raises(GispError, match="unknown sampling"):
        plan(PruneConfig(sampling="windows", **base))


def test_a_window_trajectory_records_its_calibration(tiny_llama, data_dir):
    config = PruneConfig(
        model=str(tiny_llama),
        sampling="window",
        num_samples=3,
        seq_len=32,
        steps=2,
        max_sparsity=0.3,
        protect_first=1,
        dtype="float32",
        batch_size=3,
    )
    traj = prune(config).trajectory
    described = traj.meta["objective"]["calibration"]
    assert described["sampling"] == "window" and traj.meta["settings"]["sampling"] == "window"
    assert len(described["window_starts"]) == 3
    expected = build_calibration(
        AutoTokenizer.from_pretrained(str(tiny_llama)), resolve_text_source("lambada"), 3, 32, 0, "window"
    ).input_ids
    assert torch.equal(rebuild_calibration(AutoTokenizer.from_pretrained(str(tiny_llama)), described), expected)


def test_cli_and_run_page_pass_the_sampler(tiny_llama, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from gisp_engine.cli import build_parser
    from gisp_engine.jobs import background as jobs

    args = build_parser().parse_args(["prune", "--sampling", "window"])
    assert args.sampling == "window"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prune", "--sampling", "random"])

    def refuse(config):  # the page shows a GispError as a message: it carries what was asked
        raise GispError(f"asked for sampling {config.sampling}")

    monkeypatch.setattr(jobs, "submit", refuse)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("pages/1_Run.py").run()
    assert not at.exception
    next(s for s in at.selectbox if s.label == "Calibration sampling").set_value("window")
    at.button[0].click().run()
    assert any("asked for sampling window" in e.value for e in at.error)


def test_windows_are_the_reference_loaders_own_draws(tok, tmp_path):
    """The reference loaders' calibration (SparseGPT/Wanda get_c4, as the GISP code uses it), written out here:
    a seeded Random redraws a document until it is longer than seq_len, then draws the window's start."""
    import random

    docs = [d for pair in zip(_long_docs(60), ["short one"] * 60) for d in pair]  # every other one too short
    seq_len, num_samples, seed = 16, 5, 11
    expected = []
    rng = random.Random(seed)
    for _ in range(num_samples):
        while True:
            i = rng.randint(0, len(docs) - 1)
            trainenc = tok(docs[i], return_tensors="pt")
            if trainenc.input_ids.shape[1] > seq_len:
                break
        i = rng.randint(0, trainenc.input_ids.shape[1] - seq_len - 1)
        j = i + seq_len
        expected.append(trainenc.input_ids[:, i:j])

    got = build_calibration(
        tok, _source(_write_docs(tmp_path / "ref.jsonl", docs)), num_samples, seq_len, seed=seed, sampling="window"
    )
    assert got.describe()["mode"] == "documents"
    assert torch.equal(got.input_ids, torch.cat(expected))
