"""Zero-shot multiple choice and GSM8K exact match on tiny models: batching, metrics, parsing, generation."""

from __future__ import annotations

import numpy as np
import pytest

from gisp_engine import load_model
from gisp_engine.core.errors import GispError
from gisp_engine.data.tasks import load_task
from gisp_engine.evaluation.evaluate import evaluate_task, result_text
from gisp_engine.evaluation.gsm8k import (
    cut_at_stop,
    evaluate_gsm8k,
    few_shot_prefix,
    generate_answers,
    normalize_number,
    parse_answer,
)
from gisp_engine.evaluation.zeroshot import choice_loglikelihoods, evaluate_choice_task, pick
from gisp_engine.model.structures import StructureSpace
from gisp_engine.model.surgery import KVExpandLinear, NullAttention, full_layout, mask_, slice_


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She makes 9 * 2 = $18 every day.\n#### 18", "18"),
        ("#### 1,000\n\nQuestion: what about 7?", "1000"),
        ("so the answer is $5.50.", "5.5"),
        ("it costs -3 dollars, not 4. #### -3", "-3"),
        ("first 3, then 4, then 12.", "12"),
        ("The total is 18.00", "18"),
        ("no number here", None),
        ("#### no number, but 42 came before", "42"),
    ],
)
def test_parse_answer(text, expected):
    assert parse_answer(text) == expected


def test_numbers_compare_after_normalising():
    assert normalize_number("$1,234.50") == "1234.5" == normalize_number("1234.500")
    assert normalize_number("7.") == "7" and normalize_number("0.25") == "0.25"
    assert cut_at_stop(" 4 + 4 = 8\n#### 8\n\nQuestion: next") == " 4 + 4 = 8\n#### 8\n\n"


def test_few_shot_prefix_is_fixed_and_sized(data_dir):
    two = few_shot_prefix(2)
    assert two == few_shot_prefix(2) and two.count("Question: ") == 2 and two.count("\nAnswer: ") == 2
    assert two.endswith("\n\n") and few_shot_prefix(0) == ""
    with pytest.raises(GispError):
        few_shot_prefix(-1)


def test_batching_does_not_change_scores(tiny_llama, data_dir):
    loaded = load_model(str(tiny_llama), dtype="float32")
    items = load_task("piqa").evaluation_items()[0][:6] + load_task("winogrande").evaluation_items()[0][:4]
    one = choice_loglikelihoods(loaded.model, loaded.tokenizer, items, batch_size=1)
    many = choice_loglikelihoods(loaded.model, loaded.tokenizer, items, batch_size=16)
    for a, b in zip(one, many):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    assert [len(x) for x in one] == [2] * 10 and all(np.all(x < 0) for x in one)


def test_pick_plain_and_length_normalised():
    from gisp_engine.data.tasks import ChoiceItem

    item = ChoiceItem("arc_easy", 0, "Q", ("a", "much longer"), 1)
    # -2 per char for the long option beats -3 for the short one only after normalising
    assert pick(item, np.array([-3.0, -22.0])) == (0, 1)


def test_choice_results_report_acc_norm_where_the_harness_does(tiny_llama, data_dir):
    loaded = load_model(str(tiny_llama), dtype="float32")
    events = []
    result = evaluate_task(loaded.model, loaded.tokenizer, "cmqa", limit=2, batch_size=4, progress=events.append)
    by_task = {t.task: t for t in result.tasks}
    assert list(by_task) == ["boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]
    assert {t for t, r in by_task.items() if r.acc_norm is not None} == {
        "piqa",
        "hellaswag",
        "arc_easy",
        "arc_challenge",
        "openbookqa",
    }
    assert all(r.items == 2 and r.acc in (0.0, 0.5, 1.0) for r in by_task.values())
    assert result.average_acc == pytest.approx(np.mean([r.acc for r in by_task.values()]))
    assert "average" in result_text(result) and set(result.to_dict()["tasks"]) == set(by_task)
    finals = [e for e in events if e.phase == "eval" and e.done == e.total]
    assert {e.message for e in finals} == set(by_task)
    with pytest.raises(GispError, match="--limit"):
        evaluate_choice_task(loaded.model, loaded.tokenizer, "piqa", limit=0)


def test_generation_on_a_sliced_model_equals_the_masked_model(tiny_llama, data_dir):
    """GSM8K generates on physically pruned models: KV cache through NullAttention and KVExpandLinear."""
    sliced, masked = load_model(str(tiny_llama), dtype="float32"), load_model(str(tiny_llama), dtype="float32")
    space = StructureSpace(sliced.geometry, "query")
    keep = np.ones(space.size, bool)
    for h in range(sliced.geometry.num_heads):
        keep[space.id(1, "head", h)] = False  # layer 1 loses every head
    keep[space.id(2, "head", 0)] = False  # layer 2: uneven query groups per KV head
    keep[space.id(2, "channel", 3)] = False
    slice_(sliced.model, sliced.adapter, space, full_layout(space), keep)
    mask_(masked.model, masked.adapter, space, keep)
    layers = sliced.adapter.layers(sliced.model)
    assert isinstance(sliced.adapter.attention_module(layers[1]), NullAttention)
    assert isinstance(sliced.adapter.attention(layers[2]).k, KVExpandLinear)
    prompts = ["Question: 2 + 2?\nAnswer:", "Question: how many legs does a spider have, in total?\nAnswer:"]
    a = generate_answers(sliced.model, sliced.tokenizer, prompts, max_new_tokens=12, batch_size=2)
    b = generate_answers(masked.model, masked.tokenizer, prompts, max_new_tokens=12, batch_size=2)
    assert a == b and all(isinstance(t, str) for t in a)


def test_gsm8k_result_on_a_tiny_model(tiny_llama, data_dir):
    loaded = load_model(str(tiny_llama), dtype="float32")
    result = evaluate_gsm8k(loaded.model, loaded.tokenizer, limit=2, few_shot=1, max_new_tokens=6, batch_size=2)
    assert result.items == 2 and 0.0 <= result.exact_match <= 1.0
    assert result.counts == {"total": 1319, "calibration_pool": 0, "calibration_slice": 0, "held_out": 1319}
    assert [s["reference"] for s in result.samples] == ["18", "3"]
    assert "2 test problems, 1-shot" in result_text(result)
