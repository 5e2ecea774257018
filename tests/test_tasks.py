"""Task data: loaders on the real files, errors that name the file and line, the calibration split."""

from __future__ import annotations

import bz2
import hashlib
import json

import pytest

from gisp_engine.core.errors import GispError
from gisp_engine.data.tasks import (
    CHOICE_TASKS,
    POOL_FRACTION,
    SOURCES,
    ChoiceItem,
    ProblemItem,
    calibration_exclusions,
    load_task,
    parse_tasks,
    source_identity,
)

# record counts from ../shared/data/README.md
COUNTS = {
    "boolq": 3270,
    "piqa": 1838,
    "hellaswag": 10042,
    "winogrande": 1267,
    "arc_easy": 2376,
    "arc_challenge": 1172,
    "openbookqa": 500,
    "gsm8k_train": 7473,
    "gsm8k_test": 1319,
}


@pytest.mark.parametrize("name", list(COUNTS))
def test_loaders_read_every_record_of_the_real_files(data_dir, name):
    data = load_task(name)
    assert len(data.items) == COUNTS[name]
    assert [it.index for it in data.items] == list(range(COUNTS[name]))
    assert data.source["kind"] == "file" and data.source["file"] == SOURCES[name].local
    if name.startswith("gsm8k"):
        assert all(isinstance(it, ProblemItem) and it.final for it in data.items)
        return
    assert all(isinstance(it, ChoiceItem) and 0 <= it.gold < len(it.choices) for it in data.items)
    if name == "hellaswag":
        assert {len(it.choices) for it in data.items} == {4}
    if name == "winogrande":  # partial scoring: the shared continuation after each context option
        first = data.items[0]
        assert first.continuation == "always got the easier cases." and first.gold == 1
        assert first.requests() == [(o, " always got the easier cases.") for o in first.choices]
    if name == "boolq":
        assert {it.choices for it in data.items} == {("no", "yes")}
        assert data.items[0].requests()[1] == (data.items[0].query, " yes")
    # lm-evaluation-harness's prompts (tests/test_lm_eval_agreement.py checks them against its own tasks)
    query = data.items[0].query
    if name == "boolq":
        assert not query.startswith("Passage:") and query.endswith("?\nAnswer:") and "\nQuestion: " in query
    if name in ("piqa", "arc_easy", "arc_challenge"):
        assert all(it.query.startswith("Question: ") and it.query.endswith("\nAnswer:") for it in data.items)
    if name == "openbookqa":
        assert query.startswith("A person wants to start saving money") and "Answer" not in query


def test_hellaswag_items_follow_the_six_line_layout(data_dir):
    with bz2.open(data_dir / "cmqa" / "hellaswag_val_full.txt.bz2", "rt", encoding="utf-8") as fh:
        head = [next(fh).rstrip("\n") for _ in range(12)]
    items = load_task("hellaswag").items
    # lm-eval capitalizes ctx_b, the fragment after the last sentence ("... a roof. he" -> "... a roof. He")
    assert head[0].endswith("roof. he") and items[0].query == head[0][:-2] + "He"
    assert items[0].gold == int(head[1]) and items[0].choices == tuple(head[2:6])
    assert head[6].endswith("pole. the lady") and items[1].query == head[6][: -len("the lady")] + "The lady"
    assert items[1].choices == tuple(head[8:12])


@pytest.mark.parametrize(
    ("context", "query"),
    [
        ("Sumo: A video is shown. two men", "Sumo: A video is shown. Two men"),
        ("Health: How to rest. Sleep well. Drink water.", "Health: How to rest. Sleep well. Drink water."),
        ("Home: Visit a site like [www.x.org] to find  games.", "Home: Visit a site like to find games."),
        ("Home: How to [title] Do it.", "Home: How to. Do it."),
    ],
)
def test_hellaswag_preprocessing_is_lm_evaluation_harness_s(context, query):
    from gisp_engine.data.tasks import hellaswag_item

    item = hellaswag_item("hellaswag", 0, context, [" an [step] end ", "b", "c", "d"], 0, "x")
    assert item.query == query and item.choices == ("an end", "b", "c", "d")
    with pytest.raises(GispError, match="x: empty context or ending"):
        hellaswag_item("hellaswag", 0, context, ["[only a marker]", "b", "c", "d"], 0, "x")


@pytest.fixture
def tmp_data(tmp_path, monkeypatch):
    """An empty data directory in place of the shared one, with the hub switched off."""
    (tmp_path / "cmqa").mkdir()
    (tmp_path / "gsm8k").mkdir()
    monkeypatch.setenv("GISP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GISP_OFFLINE", "1")
    return tmp_path


def _write_jsonl(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")


GOOD = {"query": "Question: why?", "choices": ["a", "b"], "gold": 1}
GOOD_QUERY = {"boolq": "Passage: P.\nQuestion: why?", "piqa": "Question: why?\n"}  # each file's layout


@pytest.mark.parametrize(
    ("task", "bad", "message"),
    [
        ("arc_easy", '{"query": "Question: why?", "choices": ["a", "b"], "gold": 1', "malformed JSON"),
        (
            "arc_easy",
            {"query": "Question: why?", "choices": ["a", "b"], "gold": 2},
            "'gold' must be an option index 0..1",
        ),
        ("boolq", {"query": "", "choices": ["no", "yes"], "gold": 0}, "'query' must be a non-empty string"),
        ("boolq", {"query": "P.\nQuestion: why?", "choices": ["no", "yes"], "gold": 0}, "must start with 'Passage: '"),
        ("piqa", {"query": "Question: x\n", "choices": ["only one"], "gold": 0}, "'choices' must be a list"),
        ("piqa", {"query": "Question: x", "choices": ["a", "b"], "gold": 0}, "must end with a newline"),
        ("arc_challenge", {"query": "x?", "choices": ["a", "b"], "gold": 0}, "must start with 'Question: '"),
        ("winogrande", {"context_options": ["a", "b", "c"], "continuation": "x", "gold": 0}, "list of 2"),
        ("openbookqa", [1, 2], "expected a JSON object"),
    ],
)
def test_a_malformed_record_names_file_and_line(tmp_data, task, bad, message):
    good = {**GOOD, "query": GOOD_QUERY.get(task, GOOD["query"])}
    good = good if task != "winogrande" else {"context_options": ["a", "b"], "continuation": "x", "gold": 0}
    path = tmp_data / SOURCES[task].local
    _write_jsonl(path, [good, "", bad if not isinstance(bad, list) else json.dumps(bad), good])
    with pytest.raises(GispError) as err:
        load_task(task)
    assert f"{path}:3:" in str(err.value) and message in str(err.value)


def test_gsm8k_answer_without_final_number_is_an_error(tmp_data):
    path = tmp_data / "gsm8k" / "test.jsonl"
    _write_jsonl(path, [{"question": "1+1?", "answer": "2\n#### 2"}, {"question": "2+2?", "answer": "it is 4"}])
    with pytest.raises(GispError, match=rf"{path}:2: 'answer' has no final answer after '####'"):
        load_task("gsm8k_test")


def _write_bz2(path, lines):
    with bz2.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


def test_hellaswag_bad_gold_and_incomplete_item_name_the_line(tmp_data):
    path = tmp_data / SOURCES["hellaswag"].local
    item = ["Ctx: a man", "2", "e1", "e2", "e3", "e4"]
    _write_bz2(path, item + ["Ctx: b", "7", "e1", "e2", "e3", "e4"])
    with pytest.raises(GispError, match=rf"{path}:8: the gold line must be 0, 1, 2 or 3"):
        load_task("hellaswag")
    _write_bz2(path, item + item[:4])
    with pytest.raises(GispError, match=rf"{path}:7: incomplete item: expected 6 lines .* found 4"):
        load_task("hellaswag")
    _write_bz2(path, item + item)
    assert [it.gold for it in load_task("hellaswag").items] == [2, 2]
    path.write_bytes(b"not bzip2 at all")
    with pytest.raises(GispError, match="not a readable bzip2 file"):
        load_task("hellaswag")


def test_missing_file_offline_is_a_clear_error(tmp_data):
    with pytest.raises(GispError) as err:
        load_task("piqa")
    text = str(err.value)
    assert str(tmp_data / "cmqa" / "piqa.jsonl") in text and "hub is off" in text and "GISP_DATA_DIR" in text
    with pytest.raises(GispError, match="hub is off"):
        source_identity("gsm8k_train")


def test_unknown_task_names_are_refused():
    with pytest.raises(GispError, match="unknown task 'squad'"):
        parse_tasks("boolq,squad")
    with pytest.raises(GispError, match="unknown task 'squad'"):
        load_task("squad")
    with pytest.raises(GispError, match="no task given"):
        parse_tasks(" , ")


def test_task_lists_are_canonical():
    assert parse_tasks("piqa,boolq") == parse_tasks(["boolq", "piqa", "boolq"]) == ("boolq", "piqa")
    assert parse_tasks("cmqa") == parse_tasks("cmqa,arc_easy") == CHOICE_TASKS
    assert len(CHOICE_TASKS) == 7


@pytest.mark.parametrize("task", CHOICE_TASKS)
def test_calibration_pool_and_held_out_items_partition_each_task(data_dir, task):
    data = load_task(task)
    pool = data.calibration_pool()
    held_out, counts = data.evaluation_items()
    held = {it.index for it in held_out}
    assert len(pool) == round(POOL_FRACTION * len(data.items)) == counts["calibration_pool"]
    assert not held & set(pool) and held | set(pool) == set(range(len(data.items)))
    assert counts["held_out"] == len(held_out) and counts["calibration_slice"] == 0
    # the seed orders the pool for calibration but never changes it
    assert sorted(data.calibration_order(0)) == sorted(data.calibration_order(7)) == pool
    assert data.calibration_order(0) != data.calibration_order(7)
    # include_pool evaluates everything except what a trajectory names
    everything, counts = data.evaluation_items(exclude=pool[:3], include_pool=True)
    assert len(everything) == len(data.items) - 3 and counts["calibration_slice"] == 3


def test_calibration_pools_are_fixed(data_dir):
    """Held-out sets must stay the same across versions, or accuracies stop being comparable."""
    digest = hashlib.sha256(json.dumps({t: load_task(t).calibration_pool() for t in CHOICE_TASKS}).encode()).hexdigest()
    assert load_task("openbookqa").calibration_pool()[:8] == [10, 36, 43, 45, 54, 60, 62, 66]
    assert digest[:16] == "2a1f6a46abb9b956"


def test_gsm8k_calibrates_on_train_and_evaluates_all_of_test(data_dir):
    assert load_task("gsm8k_train").calibration_pool() == list(range(COUNTS["gsm8k_train"]))
    items, counts = load_task("gsm8k_test").evaluation_items()
    assert len(items) == COUNTS["gsm8k_test"] and counts["calibration_pool"] == 0


def test_calibration_exclusions_read_an_objective_description():
    meta = {"objective": "margin", "slices": {"piqa": {"items": [3, 1]}, "boolq": {"items": []}}}
    assert calibration_exclusions(meta) == {"piqa": {1, 3}, "boolq": set()}
    assert calibration_exclusions({"objective": "perplexity", "calibration": {}}) == {}
    assert calibration_exclusions(None) == {}


def test_hub_records_map_into_the_file_format(tmp_data, data_dir, monkeypatch):
    """With no file and the hub allowed, records come through ``datasets`` (stubbed here: no network)."""
    import datasets

    from gisp_engine.data import tasks

    hub = {
        ("allenai/winogrande", "winogrande_xl", "validation"): [
            {
                "sentence": "Sarah was a much better surgeon than Maria so _ always got the easier cases.",
                "option1": "Sarah",
                "option2": "Maria",
                "answer": "2",
            }
        ],
        ("allenai/ai2_arc", "ARC-Easy", "test"): [
            {
                "question": "Which is a gas?",
                "choices": {"text": ["ice", "steam"], "label": ["A", "B"]},
                "answerKey": "B",
            }
        ],
        ("aps/super_glue", "boolq", "validation"): [{"passage": "P.", "question": "is it", "label": 1}],
        ("openai/gsm8k", "main", "test"): [{"question": "1+1?", "answer": "1+1=2\n#### 2"}],
        ("baber/piqa", None, "validation"): [{"goal": "open a jar", "sol1": "twist", "sol2": "push"}],  # no label
        ("Rowan/hellaswag", None, "validation"): [
            {
                "activity_label": "Home",
                "ctx_a": "[header] How to cook [title] Boil it.",
                "ctx_b": "you can",
                "endings": ["Stir [title] Then", "b", "c", "d"],
                "label": "2",
            }
        ],
    }
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return hub[(path, name, split)]

    monkeypatch.delenv("GISP_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(tasks, "_MEMO", {})
    wino = load_task("winogrande")
    assert wino.source == {
        "kind": "hub",
        "dataset": "allenai/winogrande",
        "config": "winogrande_xl",
        "split": "validation",
    }
    local = tasks.partial_item(
        "winogrande", 0, json.loads((data_dir / "cmqa" / "winogrande.jsonl").open().readline()), "x"
    )
    assert wino.items[0] == local  # the same item as the offline file's first record
    assert load_task("arc_easy").items[0].requests()[1] == ("Question: Which is a gas?\nAnswer:", " steam")
    boolq = load_task("boolq").items[0]
    assert (boolq.query, boolq.gold) == ("P.\nQuestion: is it?\nAnswer:", 1)
    # lm-eval's HellaSwag: ctx_a + " " + ctx_b.capitalize(), then its preprocessing, endings too
    hella = load_task("hellaswag").items[0]
    assert hella.query == "Home: How to cook. Boil it. You can" and hella.choices == ("Stir. Then", "b", "c", "d")
    assert hella.gold == 2
    assert load_task("gsm8k_test").items[0].final == "2"
    with pytest.raises(GispError, match=r"hub baber/piqa \(validation\) record 0: unexpected record layout"):
        load_task("piqa")
    assert len(calls) == 6
