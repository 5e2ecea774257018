"""Custom multiple-choice tasks: a JSON-lines file named by its path, evaluated and calibrated on
like the built-in tasks (same split rule, same validation), on tiny models."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from gisp_engine import load_model
from gisp_engine.cli import main
from gisp_engine.core.errors import GispError
from gisp_engine.data.tasks import (
    CHOICE_TASKS,
    POOL_FRACTION,
    is_custom_task,
    load_task,
    parse_tasks,
    source_identity,
    task_title,
)
from gisp_engine.evaluation.evaluate import evaluate_task
from gisp_engine.evaluation.zeroshot import choice_loglikelihoods

QA = [
    {
        "query": f"Question: what is {k} plus one?\nAnswer:",
        "choices": [str(k + 1), str(k + 2), "a long wrong answer"],
        "gold": 0,
    }
    for k in range(20)
]
CLOZE = [
    {
        "query": "The trophy did not fit in the suitcase because the ",
        "choices": ["trophy", "suitcase"],
        "continuation": f"was too {'big' if k % 2 else 'small'}.",
        "gold": k % 2,
    }
    for k in range(10)
]


def write(path, records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return str(path)


def test_names_titles_and_task_lists(tmp_path, monkeypatch):
    qa = write(tmp_path / "my_qa.jsonl", QA)
    assert is_custom_task(qa) and is_custom_task("rel/x.JSONL") and not is_custom_task("boolq")
    assert not is_custom_task("boolq,x.jsonl") and not is_custom_task("cmqa")
    assert task_title(qa) == "my_qa.jsonl (custom)" and task_title("piqa") == "piqa"
    monkeypatch.chdir(tmp_path)
    # a path is a task name wherever a list of decision tasks is taken; resolved, once, after the built-ins
    assert parse_tasks("my_qa.jsonl,cmqa," + qa) == (*CHOICE_TASKS, str((tmp_path / "my_qa.jsonl").resolve()))
    with pytest.raises(GispError, match=r"custom task file .*nope\.jsonl not found: a custom task is a JSON-lines"):
        parse_tasks("piqa,nope.jsonl")
    with pytest.raises(GispError, match="unknown task 'squad'.*custom task file ending in .jsonl"):
        parse_tasks("squad")


def test_items_are_used_verbatim_with_partial_scoring(tmp_path):
    qa = load_task(write(tmp_path / "qa.jsonl", QA))
    assert qa.items[3].requests() == [
        (QA[3]["query"], " 4"),
        (QA[3]["query"], " 5"),
        (QA[3]["query"], " a long wrong answer"),
    ]
    cloze = load_task(write(tmp_path / "cloze.jsonl", CLOZE))
    assert cloze.items[1].requests() == [
        ("The trophy did not fit in the suitcase because the trophy", " was too big."),
        ("The trophy did not fit in the suitcase because the suitcase", " was too big."),
    ]
    empty_query = load_task(write(tmp_path / "e.jsonl", [{**CLOZE[0], "query": "", "choices": ["A b", "C d"]}]))
    assert empty_query.items[0].requests()[1] == ("C d", " was too small.")
    assert qa.source == {
        "kind": "file",
        "file": str((tmp_path / "qa.jsonl").resolve()),
        "sha256": source_identity(str(tmp_path / "qa.jsonl"))["sha256"],
    }
    ignored = load_task(write(tmp_path / "ids.jsonl", [{**QA[0], "id": "q0", "source": "mine"}]))
    assert ignored.items[0].choices == ("1", "2", "a long wrong answer")


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([QA[0], {"choices": ["a", "b"], "gold": 0}], ":2: 'query' must be a non-empty string"),
        ([QA[0], {"query": "Q", "gold": 0}], ":2: 'choices' must be a list of at least 2"),
        ([QA[0], {"query": "Q", "choices": ["a", ""], "gold": 0}], ":2: 'choices' must be a list"),
        ([QA[0], {"query": "Q", "choices": ["a", "b"], "gold": 2}], ":2: 'gold' must be an option index 0..1"),
        ([QA[0], {"query": "Q", "choices": ["a", "b"], "gold": True}], ":2: 'gold' must be an option index"),
        ([QA[0], {"query": "Q", "choices": ["a", "b"]}], ":2: 'gold' must be an option index"),
        ([{"query": "Q", "choices": ["a", "b"], "gold": 0, "continuation": ""}], ":1: 'continuation' must be"),
        (
            [{"query": "Q", "choices": ["a", "b"], "gold": 0, "continuaton": "x"}],
            ":1: unknown field 'continuaton': did you mean 'continuation'",
        ),
        ([QA[0], '{"query": "Q", "choices": ["a"'], ":2: malformed JSON"),
        ([QA[0], "[1, 2]"], ":2: expected a JSON object"),
        ([], "holds no records"),
    ],
)
def test_bad_files_are_refused_naming_file_and_line(tmp_path, records, message):
    path = write(tmp_path / "bad.jsonl", records)
    with pytest.raises(GispError, match="bad.jsonl" + r".*" + message.replace("(", r"\(").replace("[", r"\[")):
        load_task(path)


def test_non_utf8_and_folders_are_refused(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(json.dumps(QA[0]).encode() + b"\n" + '{"query": "caf\xe9"}'.encode("latin-1") + b"\n")
    with pytest.raises(GispError, match=r"latin.jsonl:2: not UTF-8 text"):
        load_task(str(path))
    (tmp_path / "folder.jsonl").mkdir()
    with pytest.raises(GispError, match="folder.jsonl not found"):
        load_task(str(tmp_path / "folder.jsonl"))


def test_split_rule_is_the_built_in_one_and_follows_the_file_name(tmp_path):
    first = write(tmp_path / "my_qa.jsonl", QA)
    (tmp_path / "elsewhere").mkdir()
    moved = str(shutil.copy(first, tmp_path / "elsewhere" / "my_qa.jsonl"))
    renamed = str(shutil.copy(first, tmp_path / "other_name.jsonl"))
    data = load_task(first)
    pool = data.calibration_pool()
    assert len(pool) == round(POOL_FRACTION * len(QA)) == 4
    assert load_task(moved).calibration_pool() == pool  # the split does not depend on where the file lies
    assert load_task(renamed).calibration_pool() != pool  # ... but, as for built-ins, on the task's name
    held, counts = data.evaluation_items()
    assert {it.index for it in held}.isdisjoint(pool) and len(held) + len(pool) == len(QA)
    assert counts == {"total": 20, "calibration_pool": 4, "calibration_slice": 0, "held_out": 16}


def _loglikelihood_by_hand(model, tokenizer, context: str, continuation: str) -> float:
    """log P(continuation | context) with plain transformers, split as lm-evaluation-harness splits it."""
    context_ids = tokenizer(context)["input_ids"]
    whole = tokenizer(context + continuation)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
    return sum(float(logp[i - 1, whole[i]]) for i in range(len(context_ids), len(whole)))


def test_evaluate_task_scores_a_custom_file(tiny_llama, tmp_path, data_dir):
    loaded = load_model(str(tiny_llama), dtype="float32")
    qa, cloze = write(tmp_path / "qa.jsonl", QA), write(tmp_path / "cloze.jsonl", CLOZE)
    result = evaluate_task(loaded.model, loaded.tokenizer, qa, limit=5, batch_size=4)
    (task,) = result.tasks
    assert task.task == str((tmp_path / "qa.jsonl").resolve()) and task.items == 5
    # the expected accuracy by hand: each option's log-likelihood alone, argmax plain and per character
    hits, hits_norm = [], []
    items = load_task(qa).evaluation_items()[0][:5]
    for it, engine_ll in zip(items, choice_loglikelihoods(loaded.model, loaded.tokenizer, items)):
        record = QA[it.index]
        ll = np.array(
            [
                _loglikelihood_by_hand(loaded.model, loaded.tokenizer, record["query"], " " + c)
                for c in record["choices"]
            ]
        )
        np.testing.assert_allclose(engine_ll, ll, rtol=1e-5)
        hits.append(int(np.argmax(ll)) == record["gold"])
        hits_norm.append(int(np.argmax(ll / [len(c) for c in record["choices"]])) == record["gold"])
    assert task.acc == pytest.approx(np.mean(hits)) and task.acc_norm == pytest.approx(np.mean(hits_norm))
    assert 0 < np.mean(hits) < 1 or 0 < np.mean(hits_norm) < 1, "a hand check that cannot tell picks apart"
    partial = evaluate_task(loaded.model, loaded.tokenizer, cloze, batch_size=4).tasks[0]
    assert partial.acc_norm is None and partial.items == 8  # 2 of 10 in the calibration pool
    both = evaluate_task(loaded.model, loaded.tokenizer, f"piqa,{qa}", limit=2)
    assert [t.task for t in both.tasks] == ["piqa", task.task]
    assert "qa.jsonl (custom)" in both.table()


def test_gisp_eval_takes_a_task_file(tiny_llama, tmp_path, capsys):
    qa = write(tmp_path / "qa.jsonl", QA)
    assert main(["eval", "--model", str(tiny_llama), "--task", qa, "--limit", "3", "--quiet", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    (name,) = payload["tasks"]
    assert name == str((tmp_path / "qa.jsonl").resolve()) and payload["tasks"][name]["items"] == 3
    for bad, message in (
        (str(tmp_path / "missing.jsonl"), "missing.jsonl not found"),
        ("squad", "unknown evaluation task 'squad'"),
    ):
        # refused by the parser, in one line, before any model loads
        assert main(["eval", "--model", str(tiny_llama), "--task", bad, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1, err


def test_margin_objective_calibrates_on_a_custom_file(tiny_llama, tmp_path):
    from gisp_engine import PruneConfig, prune
    from gisp_engine.data.tasks import calibration_exclusions

    many = [{**r, "query": r["query"].replace("plus", f"(set {k}) plus")} for k in range(5) for r in QA]
    qa = write(tmp_path / "qa.jsonl", many)
    config = PruneConfig(
        model=str(tiny_llama),
        objective="margin",
        tasks=qa,
        calib_tokens=400,
        steps=1,
        max_sparsity=0.2,
        batch_size=4,
        dtype="float32",
    )
    traj = prune(config).trajectory
    meta = traj.meta["objective"]
    key = str((tmp_path / "qa.jsonl").resolve())
    assert meta["tasks"] == [key] and set(meta["slices"]) == {key} and meta["prompts"] == "lm-eval-0.4.13"
    taken = meta["slices"][key]["items"]
    assert taken and set(taken) <= set(load_task(qa).calibration_pool())
    # the evaluator skips exactly what the trajectory calibrated on
    loaded = load_model(str(tiny_llama), dtype="float32")
    result = evaluate_task(
        loaded.model, loaded.tokenizer, qa, exclusions=calibration_exclusions(meta), include_pool=True, limit=1
    ).tasks[0]
    assert result.counts["calibration_slice"] == len(taken)


def test_a_malformed_file_is_refused_before_anything_starts(tiny_llama, tmp_path, capsys):
    """plan, jobs.submit (the Run page) and jobs.submit_sweep (the Choose page) read the whole file first."""
    from gisp_engine import PruneConfig
    from gisp_engine.choose.sweep import SweepRequest
    from gisp_engine.jobs import background as jobs
    from gisp_engine.pruning.pruner import plan

    bad = write(tmp_path / "bad.jsonl", [QA[0], '{"query": "Q", "choices": ["a"'])
    config = PruneConfig(
        model=str(tiny_llama), objective="margin", tasks=f"piqa,{bad}", steps=1, max_sparsity=0.2, dtype="float32"
    )
    for start in (plan, jobs.submit):
        with pytest.raises(GispError, match=r"bad.jsonl:2: malformed JSON"):
            start(config)
    assert main(["prune", "--model", str(tiny_llama), "--objective", "margin", "--tasks", bad, "--steps", "1"]) == 2
    assert "bad.jsonl:2: malformed JSON" in capsys.readouterr().err

    from exporting import synthetic_trajectory

    traj = synthetic_trajectory(load_model(str(tiny_llama), dtype="float32"), "query", steps=2)
    traj = type(traj).load(traj.save(tmp_path / "trajectory"))
    with pytest.raises(GispError, match=r"bad.jsonl:2: malformed JSON"):
        jobs.submit_sweep(traj, SweepRequest(tasks=("wikitext2", bad), limit=2))
    assert jobs.list_jobs() == []
