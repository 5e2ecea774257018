"""Bad settings and bad files are refused with a message that says what to do."""

from __future__ import annotations

import json

import pytest

from gisp_engine import GispError, PruneConfig, Trajectory, prune
from gisp_engine.data.text import build_calibration, read_jsonl, resolve_text_source
from gisp_engine.model.loading import load_model


def _cfg(folder, **kw):
    base = dict(
        model=str(folder), num_samples=2, seq_len=16, steps=2, max_sparsity=0.3, protect_first=1, dtype="float32"
    )
    base.update(kw)
    return PruneConfig(**base)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"steps": 0}, "--steps must be a whole number of at least 1"),
        ({"steps": 2.5}, "--steps must be a whole number"),
        ({"max_sparsity": 1.5}, "--max-sparsity must be a fraction between 0 and 1"),
        ({"max_sparsity": 0.0}, "--max-sparsity must be a fraction between 0 and 1"),
        ({"max_sparsity": float("nan")}, "--max-sparsity must be a fraction"),
        ({"num_samples": 0}, "--num-samples must be a whole number of at least 1"),
        ({"gqa": "grouped"}, "unknown GQA policy 'grouped'"),
        ({"schedule": "exp"}, "unknown schedule 'exp'"),
        ({"normalization": "l2"}, "unknown normalization 'l2'"),
        ({"objective": "bleu"}, "unknown objective 'bleu'"),
        ({"protect_first": 2, "protect_last": 2}, "leaves nothing to prune"),
        ({"protect_first": -1}, "--protect-first must be a whole number of at least 0"),
        ({"max_sparsity": 0.9}, "only"),  # more than the unprotected layers hold
        ({"seq_len": 100000}, "longer than the model's context"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"dtype": "int3"}, "unknown dtype 'int3'"),
        ({"calib": "no/such/file.jsonl"}, "not found"),
        ({"calib": ""}, "empty calibration source"),
    ],
)
def test_bad_settings_raise_clear_errors(tiny_llama, data_dir, override, message):
    with pytest.raises(GispError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prune(_cfg(tiny_llama, **override))


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(folder)
    with pytest.raises(GispError, match=r"unsupported architecture 'gpt2'.*llama, mistral, qwen2, qwen3"):
        load_model(str(folder))
    with pytest.raises(GispError, match="unsupported architecture"):
        prune(_cfg(folder))


def test_unknown_model_and_non_model_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("GISP_OFFLINE", "1")
    with pytest.raises(GispError, match="not found in the local hub cache"):
        load_model("no-such-org/no-such-model")
    with pytest.raises(GispError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(GispError, match="does not exist"):
        load_model("./missing/folder")


def test_bad_calibration_files(tiny_llama, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(GispError, match=r"bad.jsonl:2: malformed JSON"):
        read_jsonl(bad)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"title": "no text field"}\n')
    with pytest.raises(GispError, match="record 1: a record needs a string 'text'"):
        prune(_cfg(tiny_llama, calib=str(wrong)))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(GispError, match="holds no records"):
        prune(_cfg(tiny_llama, calib=str(empty)))
    short = tmp_path / "short.txt"
    short.write_text("only a few words\n")
    loaded = load_model(str(tiny_llama))
    with pytest.raises(GispError, match="fewer than 2 x 16"):
        build_calibration(loaded.tokenizer, resolve_text_source(str(short)), 2, 16, 0)


def test_hub_sources_refused_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("GISP_OFFLINE", "1")
    monkeypatch.setenv("GISP_DATA_DIR", str(tmp_path))  # no local copies there
    with pytest.raises(GispError, match="hub is off"):
        resolve_text_source("c4")
    with pytest.raises(GispError, match="hub is off"):
        resolve_text_source("hf:allenai/c4:en:validation:text")
    with pytest.raises(GispError, match="hub is off"):
        resolve_text_source("lambada")


def test_corrupt_and_truncated_trajectories(tiny_llama, data_dir, tmp_path):
    traj = prune(_cfg(tiny_llama)).trajectory
    good = traj.save(tmp_path / "good")
    assert Trajectory.load(good).num_steps == 2

    truncated = traj.save(tmp_path / "truncated")
    arrays = truncated / "structures.safetensors"
    arrays.write_bytes(arrays.read_bytes()[:100])
    with pytest.raises(GispError, match="corrupt trajectory.*SHA-256"):
        Trajectory.load(truncated)

    broken_json = traj.save(tmp_path / "json")
    (broken_json / "trajectory.json").write_text('{"format": "gisp-traj')
    with pytest.raises(GispError, match="corrupt trajectory"):
        Trajectory.load(broken_json)

    edited = traj.save(tmp_path / "edited")
    meta = json.loads((edited / "trajectory.json").read_text())
    meta["steps"][1]["param_sparsity"] = 0.99
    (edited / "trajectory.json").write_text(json.dumps(meta))
    with pytest.raises(GispError, match="parameter sparsity does not match"):
        Trajectory.load(edited)

    with pytest.raises(GispError, match="not a trajectory"):
        Trajectory.load(tmp_path)
    with pytest.raises(GispError, match="outside 0 .. "):
        traj.step_at_sparsity(0.99)
    with pytest.raises(GispError, match="outside 0 .. "):
        traj.step_at_sparsity(-0.1)
    with pytest.raises(GispError, match="outside this trajectory's steps"):
        traj.keep_mask(7)


def test_trajectory_for_other_weights_is_refused(tiny_models, data_dir):
    from gisp_engine import apply_step

    traj = prune(_cfg(tiny_models[("llama", True)])).trajectory
    other = load_model(str(tiny_models[("mistral", True)]))
    with pytest.raises(GispError, match="was built for model"):
        apply_step(other, traj, 1)


def test_unwritable_cache_is_a_clear_error(tiny_llama, data_dir, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("GISP_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(GispError, match="cannot write to .*GISP_CACHE_DIR"):
        prune(_cfg(tiny_llama))
    from gisp_engine.model.loading import prepare_embedded_model

    with pytest.raises(GispError, match="cannot write to"):
        prepare_embedded_model()


def test_out_of_memory_suggests_what_to_lower(tiny_llama, data_dir, monkeypatch):
    import torch

    import gisp_engine.pruning.methods.gisp as gisp

    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(gisp, "score_structures", boom)  # the scoring inside the loop runs out of memory
    with pytest.raises(GispError, match=r"out of memory .*lower --batch-size .*--resume"):
        prune(_cfg(tiny_llama))


def test_cli_refuses_out_of_range_sparsity_and_foreign_trajectory(tiny_models, data_dir, capsys):
    from gisp_engine.cli import main

    traj = prune(_cfg(tiny_models[("llama", True)])).trajectory
    code = main(
        [
            "eval",
            "--model",
            str(tiny_models[("llama", True)]),
            "--trajectory",
            str(traj.path),
            "--sparsity",
            "0.95",
            "--limit",
            "1",
            "--quiet",
        ]
    )
    assert code == 2 and "outside 0 .. " in capsys.readouterr().err
    code = main(
        [
            "eval",
            "--model",
            str(tiny_models[("qwen2", True)]),
            "--trajectory",
            str(traj.path),
            "--sparsity",
            "0.1",
            "--limit",
            "1",
            "--quiet",
        ]
    )
    assert code == 2 and "was built for model" in capsys.readouterr().err
    code = main(["eval", "--model", str(tiny_models[("llama", True)]), "--seq-len", "4096", "--limit", "1", "--quiet"])
    assert code == 2 and "longer than the model's context" in capsys.readouterr().err
