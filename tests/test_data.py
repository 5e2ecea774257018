"""Calibration packing and WikiText-2 reading on the shared data."""

from __future__ import annotations

import torch

from gisp_engine.data.text import build_calibration, load_documents, resolve_text_source, wikitext2_test_text
from gisp_engine.model.loading import load_model


def test_lambada_alias_reads_the_offline_file(data_dir):
    source = resolve_text_source("lambada")
    assert source.kind == "file" and source.path.endswith("calib/lambada_openai.jsonl")
    docs = load_documents(source)
    assert len(docs) == 5153  # as the data README states
    assert source.identity()["sha256"] and source.identity()["file"] == "lambada_openai.jsonl"


def test_packing_is_seeded_and_recorded(tiny_llama, data_dir):
    tok = load_model(str(tiny_llama)).tokenizer
    source = resolve_text_source("lambada")
    a = build_calibration(tok, source, 4, 64, seed=0)
    b = build_calibration(tok, source, 4, 64, seed=0)
    c = build_calibration(tok, source, 4, 64, seed=1)
    assert a.input_ids.shape == (4, 64) and a.input_ids.dtype == torch.long
    assert torch.equal(a.input_ids, b.input_ids) and a.documents_used == b.documents_used
    assert not torch.equal(a.input_ids, c.input_ids)
    described = a.describe()
    assert described["num_samples"] == 4 and described["seq_len"] == 64 and described["seed"] == 0
    docs = load_documents(source)
    first = tok(docs[a.documents_used[0]], add_special_tokens=False)["input_ids"]
    assert a.input_ids[0, : min(64, len(first))].tolist() == first[:64]


def test_wikitext2_string_follows_the_convention(data_dir):
    text, identity = wikitext2_test_text()
    assert identity["source"] == "file" and len(identity["sha256"]) == 64
    assert text.startswith(" = Robert Boulter = \n\n\n ")
    assert "\r" not in text and text.count("\n\n") >= 2890


def test_window_sampling_on_lambada_follows_its_document_lengths(tiny_llama, data_dir):
    from gisp_engine.data.text import DOCUMENTS_PER_WINDOW, rebuild_calibration

    tok = load_model(str(tiny_llama)).tokenizer
    source = resolve_text_source("lambada")
    lengths = [len(ids) for ids in tok(load_documents(source), add_special_tokens=False)["input_ids"]]
    for seq_len in (32, 128):
        cal = build_calibration(tok, source, 4, seq_len, seed=0, sampling="window")
        long_enough = sum(n > seq_len for n in lengths)
        assert cal.mode == ("documents" if long_enough >= DOCUMENTS_PER_WINDOW * 4 else "stream")
        assert torch.equal(rebuild_calibration(tok, cal.describe()), cal.input_ids)
