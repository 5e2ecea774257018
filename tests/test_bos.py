"""The BOS policy of text windows (calibration and WikiText-2): each, stream, and auto by family.

Every perplexity is checked against an independent computation: transformers' own loss
(``model(ids, labels=ids).loss``) on windows built here by hand from the tokenized split.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoTokenizer

from gisp_engine import PruneConfig
from gisp_engine.cli import main
from gisp_engine.core.errors import GispError
from gisp_engine.data.text import (
    build_calibration,
    rebuild_calibration,
    resolve_bos,
    resolve_text_source,
    wikitext2_test_text,
)
from gisp_engine.evaluation import checks
from gisp_engine.evaluation.evaluate import wikitext2_perplexity
from gisp_engine.model.loading import load_model
from gisp_engine.pruning.importance import objective_value
from gisp_engine.pruning.objectives import objective_spec
from gisp_engine.pruning.pruner import plan, prune

SEQ, WINDOWS = 32, 3
BASE = dict(num_samples=4, seq_len=32, protect_first=1, dtype="float32", batch_size=4, steps=2, max_sparsity=0.3)


def _by_hand(model, tokenizer, bos: str, seq_len: int = SEQ, windows: int = WINDOWS) -> float:
    """exp(mean over windows of transformers' mean next-token loss), windows cut here from the split."""
    text, _ = wikitext2_test_text()
    if bos == "each":
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        rows = [[tokenizer.bos_token_id] + ids[i * (seq_len - 1) : (i + 1) * (seq_len - 1)] for i in range(windows)]
    else:  # the split tokenized once, as the tokenizer encodes a text (with its leading BOS, if it adds one)
        ids = tokenizer(text)["input_ids"]
        rows = [ids[i * seq_len : (i + 1) * seq_len] for i in range(windows)]
    assert all(len(r) == seq_len for r in rows)
    with torch.no_grad():
        losses = [float(model(torch.tensor([r]), labels=torch.tensor([r])).loss) for r in rows]
    return math.exp(sum(losses) / len(losses))


def test_auto_resolves_by_family():
    assert resolve_bos("auto", "gemma3") == "each"
    for family in ("llama", "mistral", "qwen2", "qwen3", None):
        assert resolve_bos("auto", family) == "stream"
    assert resolve_bos("each", "llama") == "each" and resolve_bos("stream", "gemma3") == "stream"
    with pytest.raises(GispError, match="unknown BOS policy 'first'"):
        resolve_bos("first", "llama")


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_wikitext2_perplexity_equals_transformers_loss_under_every_policy(tiny_models, data_dir, family):
    loaded = load_model(str(tiny_models[(family, True)]), "cpu", "float32")
    auto = "each" if family == "gemma3" else "stream"
    for bos in ("each", "stream", "auto"):
        result = wikitext2_perplexity(loaded.model, loaded.tokenizer, SEQ, WINDOWS, bos=bos)
        resolved = auto if bos == "auto" else bos
        assert result.bos == resolved and result.windows == WINDOWS and result.seq_len == SEQ
        assert result.perplexity == pytest.approx(_by_hand(loaded.model, loaded.tokenizer, resolved), rel=1e-5)
    each = wikitext2_perplexity(loaded.model, loaded.tokenizer, SEQ, WINDOWS, bos="each").perplexity
    stream = wikitext2_perplexity(loaded.model, loaded.tokenizer, SEQ, WINDOWS, bos="stream").perplexity
    assert each != pytest.approx(stream, rel=1e-4)  # the policy changes what is measured


def _objective_by_hand(loaded, bos: str, num_samples: int, seq_len: int) -> tuple[float, float, str]:
    """The perplexity objective's loss on its calibration windows, and transformers' own mean loss on them."""
    config = PruneConfig(
        model=str(loaded.folder), num_samples=num_samples, seq_len=seq_len, batch_size=2, dtype="float32", bos=bos
    )
    objective = objective_spec("perplexity").build(loaded, config)
    value = objective_value(loaded.model, objective)
    rows = objective.calibration.input_ids
    with torch.no_grad():
        losses = [float(loaded.model(row[None], labels=row[None]).loss) for row in rows]
    resolved = objective.describe()["calibration"]["bos"]
    starts_with_bos = bool((rows[:, 0] == loaded.tokenizer.bos_token_id).all())
    assert starts_with_bos == (resolved == "each"), (bos, resolved)
    return value, sum(losses) / len(losses), resolved


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_perplexity_objective_equals_transformers_loss_under_every_policy(tiny_models, data_dir, family):
    loaded = load_model(str(tiny_models[(family, True)]), "cpu", "float32")
    auto = "each" if family == "gemma3" else "stream"
    for bos in ("each", "stream", "auto"):
        value, by_hand, resolved = _objective_by_hand(loaded, bos, 4, SEQ)
        assert resolved == (auto if bos == "auto" else bos)
        assert value == pytest.approx(by_hand, rel=1e-5), bos
        assert math.exp(value) == pytest.approx(math.exp(by_hand), rel=1e-4)


def test_calibration_windows_start_with_bos_and_rebuild(tiny_llama, data_dir):
    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    source = resolve_text_source("lambada")
    for sampling in ("packed", "window"):
        each = build_calibration(tok, source, 4, 16, 0, sampling, bos="each")
        stream = build_calibration(tok, source, 4, 16, 0, sampling, bos="stream")
        assert each.input_ids.shape == stream.input_ids.shape == (4, 16)
        assert (each.input_ids[:, 0] == tok.bos_token_id).all()
        if sampling == "packed":  # the same text, one token shorter per window, behind the BOS
            flat = stream.input_ids.flatten()[: 4 * 15].view(4, 15)
            assert torch.equal(each.input_ids[:, 1:], flat)
        described = each.describe()
        assert described["bos"] == "each" and described["seq_len"] == 16
        assert torch.equal(rebuild_calibration(tok, described), each.input_ids)
        assert stream.describe()["bos"] == "stream"
    with pytest.raises(GispError, match="resolved BOS policy"):
        build_calibration(tok, source, 2, 16, 0, bos="auto")


def test_a_tokenizer_without_bos_cannot_take_each(tiny_llama, data_dir):
    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    tok.bos_token = None
    with pytest.raises(GispError, match="has no BOS token: use --bos stream"):
        build_calibration(tok, resolve_text_source("lambada"), 2, 16, 0, bos="each")


def test_cache_keys_keep_llama_and_move_gemma(tiny_models, data_dir):
    for family, auto_is in (("llama", "stream"), ("gemma3", "each")):
        model = str(tiny_models[(family, True)])
        keys = {bos: plan(PruneConfig(model=model, bos=bos, **BASE)).key for bos in ("auto", "each", "stream")}
        assert keys["auto"] == keys[auto_is] and keys["each"] != keys["stream"]
        request = plan(PruneConfig(model=model, bos="stream", **BASE)).request
        assert "bos" not in request["objective"]  # stream keys are the keys made before the setting existed


def test_gemma_trajectory_records_its_bos_and_its_evaluations_say_so(tiny_models, data_dir):
    traj = prune(PruneConfig(model=str(tiny_models[("gemma3", True)]), **BASE)).trajectory
    assert traj.meta["objective"]["calibration"]["bos"] == "each"
    loaded = load_model(str(tiny_models[("gemma3", True)]), "cpu", "float32")
    row = checks.evaluate_step(loaded, traj, 0, "wikitext2", WINDOWS, {"seq_len": SEQ})
    assert row["identity"]["options"]["bos"] == "each" and "BOS each" in row["label"]
    assert row["value"] == pytest.approx(_by_hand(loaded.model, loaded.tokenizer, "each"), rel=1e-5)
    stream = checks.evaluate_step(loaded, traj, 0, "wikitext2", WINDOWS, {"seq_len": SEQ, "bos": "stream"})
    assert "bos" not in stream["identity"]["options"] and "BOS stream" in stream["label"]
    assert not stream["cached"] and stream["value"] != pytest.approx(row["value"], rel=1e-4)


def test_llama_evaluations_keep_their_identity(tiny_llama, data_dir):
    traj = prune(PruneConfig(model=str(tiny_llama), **BASE)).trajectory
    loaded = load_model(str(tiny_llama), "cpu", "float32")
    row = checks.evaluate_step(loaded, traj, 0, "wikitext2", WINDOWS, {"seq_len": SEQ})
    assert row["identity"]["options"] == {"batch_size": 8, "seq_len": SEQ}  # as before the setting existed
    assert row["label"] == f"WikiText-2 perplexity (seq len {SEQ}, BOS stream, first {WINDOWS})"
    again = checks.evaluate_step(loaded, traj, 0, "wikitext2", WINDOWS, {"seq_len": SEQ, "bos": "stream"})
    assert again["cached"]


def test_bos_applies_to_the_perplexity_objective_only(tiny_llama, data_dir, capsys):
    with pytest.raises(GispError, match="--bos applies to the perplexity objective"):
        PruneConfig(model=str(tiny_llama), objective="margin", bos="each").validate()
    with pytest.raises(GispError, match="unknown BOS policy"):
        PruneConfig(model=str(tiny_llama), bos="sometimes").validate()
    assert main(["prune", "--model", str(tiny_llama), "--objective", "margin", "--bos", "each", "--quiet"]) == 2
    assert "--bos applies to the perplexity objective" in capsys.readouterr().err


@pytest.mark.real_model
def test_embedded_models_against_transformers_loss(embedded_model_dir, embedded_gemma_dir, data_dir):
    """SmolLM2 (auto: stream) and Gemma 3 270M (auto: each): the engine's number is transformers' own."""
    for name, auto in (("smollm2-135m", "stream"), ("gemma3-270m", "each")):
        loaded = load_model(name, "cpu", "float32")
        measured = {}
        for bos in ("stream", "each"):
            measured[bos] = wikitext2_perplexity(loaded.model, loaded.tokenizer, 128, 2, bos=bos).perplexity
            assert measured[bos] == pytest.approx(_by_hand(loaded.model, loaded.tokenizer, bos, 128, 2), rel=1e-4)
        result = wikitext2_perplexity(loaded.model, loaded.tokenizer, 128, 2)
        assert result.bos == auto and result.perplexity == measured[auto]
        # the objective's loss, under the model's own policy (every policy: on the tiny models, above)
        value, by_hand, objective_bos = _objective_by_hand(loaded, "auto", 1, 128)
        assert objective_bos == auto and value == pytest.approx(by_hand, rel=1e-4)
        if name == "gemma3-270m":  # the token Gemma was trained to see first: a far lower perplexity
            each, stream = measured["each"], measured["stream"]
            assert each < stream / 1.5  # measured 25.9 against 57.3 on these 2 windows (42.6 and 254 on 8)


def test_evaluate_page_offers_the_policy_and_states_it(runs, data_dir):
    from apptest import no_errors, open_page

    from gisp_engine.evaluation.checks import load_evaluations
    from gisp_engine.pruning.trajectory import Trajectory

    at = open_page("pages/3_Evaluate.py", select=runs["iterative"])
    at.select_slider[0].set_value(0).run()
    at.number_input[0].set_value(2)  # windows
    at.selectbox[1].set_value("each")  # the BOS policy (a llama: auto would be stream)
    at.button[0].click().run()
    no_errors(at)
    (row,) = load_evaluations(Trajectory.load(runs["iterative"]))
    assert row["identity"]["options"]["bos"] == "each" and row["details"]["bos"] == "each"
    shown = at.dataframe[-1].value
    assert list(shown["check"]) == ["WikiText-2 perplexity (seq len 128, BOS each, first 2)"]
