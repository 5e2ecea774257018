"""The dry run (``gisp prune --dry-run``) and its memory estimate: what autograd really keeps, refusals, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from gisp_engine import PruneConfig
from gisp_engine.cli import main
from gisp_engine.core.errors import GispError
from gisp_engine.model.adapters import adapter_for_config
from gisp_engine.model.nll import sequence_nll
from gisp_engine.model.structures import StructureSpace
from gisp_engine.model.surgery import full_layout
from gisp_engine.pruning import plan_estimate
from gisp_engine.pruning.importance import scored_targets
from gisp_engine.pruning.pruner import plan, prune


def saved_bytes(model, adapter, space, scored_layers, ids) -> int:
    """Bytes of every distinct storage autograd saves in one forward (parameters left out), as scoring runs it."""
    for p in model.parameters():
        p.requires_grad_(False)
    for t in scored_targets(model, adapter, space, full_layout(space), scored_layers):
        t.param.requires_grad_(True)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sequence_nll(model, ids).sum()
    return sum(seen.values())


@pytest.mark.parametrize(
    "family, gqa, policy, dtype, length",
    [
        ("llama", True, "query", torch.float32, 24),
        ("llama", False, "query", torch.float32, 24),
        ("llama", True, "kv-group", torch.bfloat16, 24),
        ("qwen3", True, "query", torch.float32, 24),  # q/k norms
        (
            "gemma3",
            True,
            "query",
            torch.float32,
            24,
        ),  # four norms per layer, q/k norms, sliding window 8 < 24: K/V expanded
        ("gemma3", True, "query", torch.bfloat16, 6),  # every window longer than the sequence: no mask
    ],
)
def test_the_activation_term_is_what_autograd_saves(tiny_models, family, gqa, policy, dtype, length):
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = tiny_models[(family, gqa)]
    config = AutoConfig.from_pretrained(folder)
    adapter = adapter_for_config(config)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    space = StructureSpace(adapter.geometry(config), policy)
    scored = [1, 2]  # layer 0 and the last protected, as by default on 4 layers with --protect-first 1
    ids = torch.randint(0, config.vocab_size, (3, length), generator=torch.Generator().manual_seed(0))
    measured = saved_bytes(model, adapter, space, scored, ids)
    work = plan_estimate.Workload(micro_batches=1, batch=3, length=length, masked=False)
    est = plan_estimate.estimate_memory(
        plan_estimate.meta_model(config, dtype),
        adapter,
        space,
        scored,
        dtype,
        torch.device("cpu"),
        work,
        gradients=True,
    )
    # exact up to what the estimate leaves out: RoPE's cos/sin and Gemma's (1 + weight) vectors, a few KiB
    assert est.part("activations") == pytest.approx(measured, rel=0.03), (est.part("activations"), measured)


def test_gradient_sums_count_every_scored_weight_once_and_only_with_several_micro_batches(tiny_llama):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_llama)
    adapter = adapter_for_config(config)
    space = StructureSpace(adapter.geometry(config), "query")
    model = plan_estimate.meta_model(config, torch.bfloat16)
    g = space.geometry
    per_layer = 2 * g.num_heads * g.head_dim * g.hidden_size + 3 * g.hidden_size * g.intermediate_size  # q, o; MLP
    for micro_batches, expected in ((1, 0), (3, 4 * 2 * per_layer)):
        work = plan_estimate.Workload(micro_batches, 2, 16, False)
        est = plan_estimate.estimate_memory(
            model, adapter, space, [1, 2], torch.bfloat16, torch.device("cpu"), work, True
        )
        assert est.part("gradient sums") == expected
        assert est.part("weights") == sum(p.numel() for p in model.parameters()) * 2 + sum(
            b.numel() * b.element_size() for b in model.buffers()
        )


def _cache_listing(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_dry_run_prints_the_plan_without_loading_weights(tiny_llama, data_dir, capsys, monkeypatch):
    import transformers

    def no_weights(*args, **kwargs):
        raise AssertionError("a dry run loaded weights")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    argv = [
        "prune",
        "--model",
        str(tiny_llama),
        "--num-samples",
        "6",
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--steps",
        "3",
        "--protect-first",
        "1",
        "--dry-run",
    ]
    assert main(argv + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (
        out["key"]
        == plan(
            PruneConfig(model=str(tiny_llama), num_samples=6, seq_len=32, batch_size=4, steps=3, protect_first=1)
        ).key
    )
    assert out["cached"] is False and out["micro_batches"] == 2 and out["tokens_per_step"] == 6 * 32
    assert out["largest_micro_batch"] == {"sequences": 4, "length": 32}
    assert out["scored_layers"] == [1, 2] and out["fits"] is True and out["time"] is None
    parts = {p["name"]: p["bytes"] for p in out["memory"]["parts"]}
    assert parts["gradient sums"] > 0 and parts["activations"] > 0 and parts["weights"] > 0
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "cache key" in text and "peak memory" in text and "no measured speed" in text


def test_a_real_run_records_its_speed_for_the_next_dry_run(tiny_llama, data_dir, capsys):
    argv = [
        "prune",
        "--model",
        str(tiny_llama),
        "--num-samples",
        "4",
        "--seq-len",
        "32",
        "--steps",
        "2",
        "--protect-first",
        "1",
        "--quiet",
    ]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv + ["--dry-run", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cached"] is True
    assert out["time"]["tokens_per_s"] > 0 and out["time"]["first_step_s"] > 0
    assert out["time"]["run_s"] == pytest.approx(2 * out["time"]["first_step_s"], rel=1e-3)


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (lambda tmp, tiny: ["--model", str(tmp)], "no config.json"),
        (lambda tmp, tiny: ["--model", "./no/such/folder"], "does not exist"),
        (lambda tmp, tiny: ["--model", str(_gpt2(tmp))], "unsupported architecture 'gpt2'.*llama, mistral"),
        (lambda tmp, tiny: ["--model", str(tiny), "--device", "cuda:3"], "no such device on this machine; it has cpu"),
        (lambda tmp, tiny: ["--model", str(tiny), "--device", "tpu"], "no such device on this machine; it has cpu"),
        (
            lambda tmp, tiny: ["--model", str(tiny), "--dtype", "int3"],
            "argument --dtype: invalid choice: 'int3' \\(choose from 'auto', 'float32'",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    tiny_llama, isolated_cache, tmp_path, capsys, make_bad, message
):
    import re

    before = _cache_listing(isolated_cache)
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["prune", *make_bad(empty, tiny_llama), "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and re.search(message, err), err
    assert _cache_listing(isolated_cache) == before


def _gpt2(tmp: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp.parent / "gpt2"
    if not folder.is_dir():
        GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(folder)
    return folder


def test_a_run_too_big_for_free_memory_is_refused_before_loading(tiny_llama, data_dir, monkeypatch, capsys):
    from gisp_engine.pruning import pruner

    config = PruneConfig(model=str(tiny_llama), num_samples=8, seq_len=32, batch_size=8, steps=2, protect_first=1)
    full = plan_estimate.dry_run(plan(config))
    # free memory between the estimate at 8 sequences per micro-batch and the one at 2
    smaller = plan_estimate.dry_run(plan(PruneConfig(**{**config.to_dict(), "batch_size": 2})))
    need = lambda r: r.memory.peak - r.memory.part("runtime")  # noqa: E731
    assert need(smaller) < need(full)
    free = int((need(smaller) + need(full)) / 2 / plan_estimate.HEADROOM)
    monkeypatch.setattr(plan_estimate, "free_bytes", lambda device, spread=False: free)
    monkeypatch.setattr(plan_estimate, "quick_upper_bound", lambda *a: 1 << 62)
    loads = []
    monkeypatch.setattr(pruner, "load_model", lambda *a, **k: loads.append(a) or pytest.fail("loaded weights"))
    with pytest.raises(GispError, match=r"would fit with --batch-size [24] .*--force runs anyway") as err:
        prune(config, use_cache=False)
    assert "\n" not in str(err.value) and not loads
    code = main(
        [
            "prune",
            "--model",
            str(tiny_llama),
            "--num-samples",
            "8",
            "--seq-len",
            "32",
            "--batch-size",
            "8",
            "--steps",
            "2",
            "--protect-first",
            "1",
            "--quiet",
        ]
    )
    assert code == 2 and "--batch-size" in capsys.readouterr().err
    monkeypatch.undo()
    assert prune(config, use_cache=False, check_memory=False).trajectory.num_steps == 2  # --force


def test_quick_bound_covers_the_estimate(tiny_models, data_dir):
    """The config-only bound that lets a real run skip the estimate is above the estimate it skips."""
    for (family, gqa), folder in tiny_models.items():
        config = PruneConfig(model=str(folder), num_samples=8, seq_len=32, batch_size=4, protect_first=1)
        the_plan = plan(config)
        est = plan_estimate.dry_run(the_plan)
        _folder, hf_config, _adapter = plan_estimate.load_config(str(folder))
        bound = plan_estimate.quick_upper_bound(
            config, hf_config, the_plan.space.geometry, torch.device("cpu"), torch.float32
        )
        assert bound >= est.memory.peak - est.memory.part("runtime"), (family, gqa)


def test_devices_here_names_the_cpu():
    assert plan_estimate.devices_here()[0] == "cpu"
    assert plan_estimate.check_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(GispError, match="it has cpu$"):
            plan_estimate.check_device("cuda")
    assert os.environ.get("GISP_CACHE_DIR")


def test_run_page_plans_without_starting_anything(tiny_llama, data_dir, tmp_path):
    from streamlit.testing.v1 import AppTest

    from gisp_engine.jobs import background as jobs

    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=180)
    at.run()
    at.switch_page("pages/1_Run.py").run()
    at.text_input[0].set_value(str(tiny_llama))
    numbers = {n.label: n for n in at.number_input}
    numbers["Calibration sequences"].set_value(6)
    numbers["Tokens per sequence"].set_value(32)
    numbers["Sequences per micro-batch (0: by device)"].set_value(4)
    next(b for b in at.button if b.label == "Plan (dry run)").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("it fits" in s.value for s in at.success)
    assert any("cache key" in c.value and "6 sequences, 2 micro-batches" in c.value for c in at.code)
    assert jobs.list_jobs() == []
    # a device this machine lacks: one line, nothing started
    next(s for s in at.selectbox if s.label == "Device").set_value("cuda")
    next(b for b in at.button if b.label == "Plan (dry run)").click().run()
    if not torch.cuda.is_available():
        assert any("No plan: --device cuda: no such device on this machine" in e.value for e in at.error)
    assert jobs.list_jobs() == []
