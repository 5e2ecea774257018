"""The task objectives: margin = L+ - L- (gradient g+ - g-), GSM8K answer NLL, their calibration
slices, padding, cache keys, and a margin trajectory evaluated on held-out items only."""

from __future__ import annotations

import json

import pytest
import torch

from gisp_engine import PruneConfig, load_model, plan, prune
from gisp_engine.cli import main
from gisp_engine.core.errors import GispError
from gisp_engine.data.tasks import load_task
from gisp_engine.model.loglik import continuation_logprobs, encode_pair, pad_batch, scored_sequence
from gisp_engine.pruning.importance import objective_value
from gisp_engine.pruning.objectives import OBJECTIVES, objective_spec
from gisp_engine.pruning.objectives.gsm8k import PROMPT


def answer_nll(model, tokenizer, context: str, continuation: str) -> torch.Tensor:
    """Mean NLL of the continuation's tokens: one unpadded sequence, full logits, plain cross-entropy.

    A pair longer than the model's context loses its first tokens (lm-evaluation-harness's rule).
    """
    ctx, cont = encode_pair(tokenizer, context, continuation)
    ids = torch.tensor([(ctx + cont)[-(model.config.max_position_embeddings + 1) :]])
    n = min(len(cont), ids.shape[1] - 1)
    logits = model(input_ids=ids[:, :-1], use_cache=False).logits[0].float()
    return torch.nn.functional.cross_entropy(logits[-n:], ids[0, -n:])


def grads_of(model, value: torch.Tensor) -> dict[str, torch.Tensor]:
    params = [p for p in model.parameters()]
    got = torch.autograd.grad(value, params, allow_unused=True)
    return {name: g for (name, _), g in zip(model.named_parameters(), got) if g is not None}


@pytest.mark.parametrize("family", [("llama", True), ("qwen2", False)], ids=["llama-gqa", "qwen2-mha"])
def test_margin_gradient_is_g_plus_minus_g_minus(tiny_models, data_dir, family):
    folder = tiny_models[family]
    loaded = load_model(str(folder), dtype="float32")
    model, tok = loaded.model, loaded.tokenizer
    # two tasks, one with partial scoring; batch_size 3 -> several micro-batches, mixed lengths, padding
    config = PruneConfig(
        model=str(folder),
        objective="margin",
        tasks="winogrande,arc_easy",
        calib_tokens=900,
        batch_size=3,
        dtype="float32",
    )
    objective = objective_spec("margin").build(loaded, config)
    assert len(objective.batches()) > 2

    correct, incorrect = [], []
    for task, sl in objective.describe()["slices"].items():
        items = load_task(task).items
        for i in sl["items"]:
            for k, (context, continuation) in enumerate(items[i].requests()):
                (correct if k == items[i].gold else incorrect).append((context, continuation))
    for p in model.parameters():
        p.requires_grad_(True)
    l_plus = torch.stack([answer_nll(model, tok, c, x) for c, x in correct]).mean()
    l_minus = torch.stack([answer_nll(model, tok, c, x) for c, x in incorrect]).mean()
    g_plus, g_minus = grads_of(model, l_plus), grads_of(model, l_minus)

    total = 0.0
    summed: dict[str, torch.Tensor] = {}
    for batch in objective.batches():
        loss = objective.loss(model, batch)
        total += float(loss.detach())
        for name, g in grads_of(model, loss).items():
            summed[name] = summed.get(name, 0) + g
    assert total == pytest.approx(float((l_plus - l_minus).detach()), rel=1e-4, abs=1e-5)  # float32 sums (1.2e-6 seen)
    assert objective.describe()["sequences"] == {"correct": len(correct), "incorrect": len(incorrect)}
    assert set(summed) == set(g_plus)
    for name, g in summed.items():
        torch.testing.assert_close(g, g_plus[name] - g_minus[name], rtol=1e-4, atol=1e-6)
    # not trivially equal to g+ alone: the incorrect options pull the other way
    assert any((g_minus[n].abs().sum() > 1e-3) for n in g_minus)


def test_padded_batches_score_like_single_sequences(tiny_llama):
    loaded = load_model(str(tiny_llama), dtype="float32")
    pairs = [("Question: why is the sky blue?", " light"), ("A", " long long answer here"), ("Q:\n", " x")]
    seqs = [scored_sequence(loaded.tokenizer, c, x) for c, x in pairs]
    with torch.no_grad():
        batched, counts = continuation_logprobs(loaded.model, pad_batch(seqs, pad_id=5))
        single = [float(continuation_logprobs(loaded.model, pad_batch([s]))[0]) for s in seqs]
        plain = [
            -float(answer_nll(loaded.model, loaded.tokenizer, c, x)) * n for (c, x), n in zip(pairs, counts.tolist())
        ]
    assert batched.tolist() == pytest.approx(single, rel=1e-5)
    assert single == pytest.approx(plain, rel=1e-5)
    # trailing whitespace of the context moves to the continuation, as lm-evaluation-harness does
    ctx, cont = encode_pair(loaded.tokenizer, "Q:\n", " x")
    assert loaded.tokenizer.decode(ctx) == "Q:" and loaded.tokenizer.decode(cont) == "\n x"


def test_margin_budget_is_spread_evenly_and_drawn_from_the_pool(tiny_llama, data_dir):
    loaded = load_model(str(tiny_llama), dtype="float32")
    config = PruneConfig(model=str(tiny_llama), objective="margin", tasks="cmqa", calib_tokens=7 * 300, seed=3)
    desc = objective_spec("margin").build(loaded, config).describe()
    assert desc["tasks"] == ["boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]
    for task, sl in desc["slices"].items():
        data = load_task(task)
        assert set(sl["items"]) <= set(data.calibration_pool())
        assert sl["items"] == data.calibration_order(3)[: len(sl["items"])]  # whole items, seeded order
        assert sl["tokens"] >= 300
        # the last item was needed: without it the task's share was not reached
        last = data.items[sl["items"][-1]]
        last_tokens = sum(len(scored_sequence(loaded.tokenizer, c, x)) for c, x in last.requests())
        assert sl["tokens"] - last_tokens < 300
    assert desc["tokens_used"] == sum(s["tokens"] for s in desc["slices"].values())
    with pytest.raises(GispError, match="calibration pool .* is smaller than its share"):
        objective_spec("margin").build(
            loaded, PruneConfig(model=str(tiny_llama), objective="margin", tasks="openbookqa", calib_tokens=10**7)
        )


def test_margin_items_per_task_take_exactly_that_many_items(tiny_llama, data_dir):
    loaded = load_model(str(tiny_llama), dtype="float32")
    config = PruneConfig(model=str(tiny_llama), objective="margin", tasks="hellaswag,winogrande", calib_items=5, seed=2)
    desc = objective_spec("margin").build(loaded, config.validate()).describe()
    assert desc["calib_items"] == 5 and "calib_tokens" not in desc
    for task, sl in desc["slices"].items():
        data = load_task(task)
        assert sl["items"] == data.calibration_order(2)[:5]  # the seeded order, whatever the items' lengths
        expected = sum(
            len(scored_sequence(loaded.tokenizer, c, x, loaded.max_length or None))
            for i in sl["items"]
            for c, x in data.items[i].requests()
        )
        assert sl["tokens"] == expected
    # long HellaSwag items cost more tokens than short WinoGrande ones at the same item count
    assert desc["slices"]["hellaswag"]["tokens"] > desc["slices"]["winogrande"]["tokens"]
    pool = len(load_task("openbookqa").calibration_pool())
    with pytest.raises(GispError, match=f"--calib-items {pool + 1} is more than its calibration pool holds"):
        objective_spec("margin").build(
            loaded, PruneConfig(model=str(tiny_llama), objective="margin", tasks="openbookqa", calib_items=pool + 1)
        )
    with pytest.raises(GispError, match=f"--calib-items {pool + 1} is more than its calibration pool holds"):
        plan(PruneConfig(model=str(tiny_llama), objective="margin", tasks="openbookqa", calib_items=pool + 1))
    with pytest.raises(GispError, match="not both"):
        PruneConfig(objective="margin", calib_items=4, calib_tokens=100).validate()
    with pytest.raises(GispError, match="applies to the margin objective, not 'perplexity': .*--num-samples"):
        PruneConfig(objective="perplexity", calib_items=4).validate()
    with pytest.raises(GispError, match="applies to the margin objective, not 'gsm8k': .*--calib-tokens"):
        PruneConfig(objective="gsm8k", calib_items=4).validate()
    with pytest.raises(GispError, match="--calib-items must be a whole number of at least 1"):
        PruneConfig(objective="margin", calib_items=0).validate()


def test_gsm8k_objective_is_the_mean_answer_nll(tiny_llama, data_dir):
    loaded = load_model(str(tiny_llama), dtype="float32")
    config = PruneConfig(model=str(tiny_llama), objective="gsm8k", calib_tokens=1500, batch_size=2)
    objective = objective_spec("gsm8k").build(loaded, config)
    desc = objective.describe()
    items = desc["slices"]["gsm8k_train"]["items"]
    assert items == load_task("gsm8k_train").calibration_order(0)[: len(items)] and desc["tokens_used"] >= 1500
    train = load_task("gsm8k_train").items
    with torch.no_grad():
        expected = torch.stack(
            [
                answer_nll(
                    loaded.model, loaded.tokenizer, PROMPT.format(question=train[i].question), " " + train[i].answer
                )
                for i in items
            ]
        ).mean()
    value = objective_value(loaded.model, objective)
    assert value == pytest.approx(float(expected), rel=1e-5)
    assert objective.summary(value)["answer_perplexity"] == pytest.approx(float(torch.exp(expected)), rel=1e-4)


def test_objectives_are_registered_for_the_cli(capsys):
    assert {"perplexity", "margin", "gsm8k"} <= set(OBJECTIVES)
    assert main(["prune", "--objective", "nope"]) == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_cache_key_follows_tasks_budget_seed_and_data(tiny_llama, data_dir, tmp_path, monkeypatch):
    def key(**kw):
        return plan(PruneConfig(model=str(tiny_llama), objective="margin", **kw)).key

    base = key(tasks="boolq,piqa")
    assert key(tasks="piqa,boolq") == base  # the same task set
    assert key(tasks="boolq") != base
    assert key(tasks="boolq,piqa", calib_tokens=4096) != base
    assert key(tasks="boolq,piqa", seed=1) != base
    assert key(tasks="boolq,piqa", calib_items=8) not in (base, key(tasks="boolq,piqa", calib_items=9))
    assert key(tasks="cmqa") == key(tasks="boolq,piqa,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa")
    assert plan(PruneConfig(model=str(tiny_llama), objective="perplexity")).key != base
    assert plan(PruneConfig(model=str(tiny_llama), objective="gsm8k")).key not in (base,)
    # a changed task file is a different calibration signal
    copy = tmp_path / "data"
    (copy / "cmqa").mkdir(parents=True)
    for t in ("boolq", "piqa"):
        (copy / "cmqa" / f"{t}.jsonl").write_bytes((data_dir / "cmqa" / f"{t}.jsonl").read_bytes())
    monkeypatch.setenv("GISP_DATA_DIR", str(copy))
    assert key(tasks="boolq,piqa") == base
    with open(copy / "cmqa" / "piqa.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"query": "Question: x\n", "choices": ["a", "b"], "gold": 0}) + "\n")
    assert key(tasks="boolq,piqa") != base
    with pytest.raises(GispError, match="unknown task 'nope'"):
        key(tasks="boolq,nope")


def run_json(capsys, argv):
    assert main(argv + ["--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_margin_trajectory_is_evaluated_on_held_out_items_only(tiny_llama, data_dir, capsys):
    config = PruneConfig(
        model=str(tiny_llama),
        objective="margin",
        tasks="arc_easy,piqa",
        calib_tokens=800,
        steps=2,
        max_sparsity=0.3,
        batch_size=4,
        dtype="float32",
    )
    traj = prune(config).trajectory
    slices = traj.meta["objective"]["slices"]
    assert set(slices) == {"piqa", "arc_easy"} and all(s["items"] for s in slices.values())
    assert all("margin" in rec.metrics for rec in traj.steps)

    args = ["eval", "--model", str(tiny_llama), "--task", "arc_easy", "--limit", "3", "--quiet"]
    dense = run_json(capsys, args)
    pruned = run_json(capsys, args + ["--trajectory", str(traj.path), "--step", "2"])
    everything = run_json(capsys, args + ["--trajectory", str(traj.path), "--step", "2", "--all-items"])
    for payload in (dense, pruned):  # the same held-out items, whatever the objective
        counts = payload["tasks"]["arc_easy"]["counts"]
        assert counts == {"total": 2376, "calibration_pool": 475, "calibration_slice": 0, "held_out": 1901}
    counts = everything["tasks"]["arc_easy"]["counts"]
    assert counts["calibration_pool"] == 0 and counts["calibration_slice"] == len(slices["arc_easy"]["items"])
    assert counts["held_out"] == 2376 - len(slices["arc_easy"]["items"])
    assert pruned["step"] == 2 and pruned["param_sparsity"] > 0
