"""The elastic export: one folder, every step a prefix; each step equals its own per-step export."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from exporting import CASES, NEW_TOKENS, case_id, run_isolated, synthetic_trajectory
from needs import import_or_require
from tiny import FAMILIES, cache_dir

from gisp_engine import GispError, load_model
from gisp_engine.core.settings import PROJECT_ROOT
from gisp_engine.export import remote_code
from gisp_engine.export.elastic import export_elastic, folder_bytes, survival_order
from gisp_engine.export.hf import MANIFEST, export_subnetwork, load_pruned

# layer 2 of the synthetic trajectories loses every channel: torch warns when it builds the empty MLP
pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")

STEPS = 3  # steps 0..3 of each synthetic trajectory
# Gemma 3 too where the tiny models include it (one KV head, tied embeddings, sliding-window layers)
CASES = CASES + [case for case in [("gemma3", True, "query")] if case[0] in FAMILIES and case not in CASES]


@dataclass
class Case:
    trajectory: object
    elastic: Path
    per_step: list[Path]  # per-layer export of every step
    x: torch.Tensor
    logits: list[torch.Tensor]  # of each per-step export
    tokens: list[torch.Tensor]
    param_counts: list[int]


def _outputs(model, x):
    with torch.no_grad():
        logits = model(x).logits
        tokens = model.generate(x[:1], max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    return logits, tokens


@pytest.fixture(scope="module")
def cases(tiny_models, tmp_path_factory) -> dict:
    """Every family and GQA policy: an elastic folder, and the per-step export of every step with its outputs."""
    root = tmp_path_factory.mktemp("elastic")
    with cache_dir(root / "cache"):  # weights-SHA memo out of the project cache
        out = {}
        for i, case in enumerate(CASES):
            family, gqa, policy = case
            folder = tiny_models[(family, gqa)]
            x = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(i))
            loaded = load_model(str(folder), dtype="float32")
            traj = synthetic_trajectory(loaded, policy, seed=i, steps=STEPS)
            elastic = export_elastic(loaded, traj, root / case_id(case) / "elastic").folder
            per_step, logits, tokens, counts = [], [], [], []
            for step in range(STEPS + 1):
                loaded = load_model(str(folder), dtype="float32")
                result = export_subnetwork(loaded, traj, step, root / case_id(case) / f"step-{step}")
                pruned = load_pruned(result.folder, device="cpu", dtype="float32")
                step_logits, step_tokens = _outputs(pruned.model, x)
                per_step.append(result.folder)
                logits.append(step_logits)
                tokens.append(step_tokens)
                counts.append(result.param_count)
            out[case] = Case(traj, elastic, per_step, x, logits, tokens, counts)
        return out


def _manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


# ---- every step equals its per-step export ----------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_step_equals_the_per_step_export(cases, case):
    c = cases[case]
    for step in range(STEPS + 1):
        pruned = load_pruned(c.elastic, device="cpu", dtype="float32", step=step)
        assert pruned.step == step and pruned.model.config.gisp_step == step
        assert pruned.param_count == c.param_counts[step] == pruned.manifest["steps"][step]["param_count"]
        assert pruned.param_sparsity == pytest.approx(c.trajectory.steps[step].param_sparsity)
        logits, tokens = _outputs(pruned.model, c.x)
        torch.testing.assert_close(logits, c.logits[step], rtol=1e-4, atol=1e-4)
        assert torch.equal(tokens, c.tokens[step])  # greedy generation through the (compact) KV cache
        widths = [
            [len(layer["heads"]), len(layer["kv_heads"]), len(layer["channels"])]
            for layer in _manifest(c.per_step[step])["layers"]
        ]
        assert pruned.manifest["steps"][step]["widths"] == widths


def test_step_by_sparsity_and_default(cases):
    c = cases[("qwen2", True, "query")]
    steps = _manifest(c.elastic)["steps"]
    assert load_pruned(c.elastic, device="cpu").step == STEPS  # default: the last step
    target = steps[2]["param_sparsity"] + 1e-6
    assert load_pruned(c.elastic, device="cpu", sparsity=target).step == 2
    assert load_pruned(c.elastic, device="cpu", sparsity=(steps[1]["param_sparsity"] + target) / 2).step == 1
    with pytest.raises(GispError, match="outside this export's steps"):
        load_pruned(c.elastic, device="cpu", step=STEPS + 1)
    with pytest.raises(GispError, match="outside 0 .."):
        load_pruned(c.elastic, device="cpu", sparsity=0.99)
    with pytest.raises(GispError, match="not both"):
        load_pruned(c.elastic, device="cpu", step=1, sparsity=0.1)
    with pytest.raises(GispError, match="holds step 2 only"):
        load_pruned(c.per_step[2], device="cpu", step=1)
    assert load_pruned(c.per_step[2], device="cpu", step=2).param_count == c.param_counts[2]


# ---- the order ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case", [("llama", True, "query"), ("mistral", True, "kv-group"), ("qwen3", False, "query")], ids=case_id
)
def test_survival_order_makes_every_step_a_prefix(cases, case):
    traj = cases[case].trajectory
    space, g = traj.space, traj.geometry
    order = survival_order(traj)
    survival = np.where(traj.removal_step == -1, traj.num_steps + 1, traj.removal_step)
    for layer, stored in enumerate(order):
        assert sorted(stored.heads) == list(range(g.num_heads)) and sorted(stored.kv_heads) == list(
            range(g.num_kv_heads)
        )
        assert sorted(stored.channels) == list(range(g.intermediate_size))
        # the query-to-KV map follows the original grouping, in stored positions
        assert [stored.kv_heads[k] for k in stored.q_to_kv] == [h // g.group_size for h in stored.heads]
        channels = survival[space.channel_slice(layer)][list(stored.channels)]
        assert (np.diff(channels) <= 0).all()  # longest surviving first
        for step in range(traj.num_steps + 1):
            kept = space.layer_keep(traj.keep_mask(step))[layer]
            assert set(stored.heads[: len(kept.heads)]) == set(kept.heads)
            assert set(stored.kv_heads[: len(kept.kv_heads)]) == set(kept.kv_heads)
            assert set(stored.channels[: len(kept.channels)]) == set(kept.channels)
            assert max(stored.q_to_kv[: len(kept.heads)], default=-1) < len(kept.kv_heads)


def test_folder_holds_the_dense_model_once(cases):
    c = cases[("llama", True, "query")]
    m = _manifest(c.elastic)
    assert m["kind"] == "elastic" and [s["step"] for s in m["steps"]] == list(range(STEPS + 1))
    assert set(m["remote_code"]["files"]) == {"configuration_gisp.py", "modeling_gisp.py", "modeling_gisp_elastic.py"}
    # the version recorded is the one the loader's code states
    assert m["remote_code"]["template_version"] == remote_code.ELASTIC_TEMPLATE_VERSION
    assert (
        f"GISP_TEMPLATE_VERSION = {remote_code.ELASTIC_TEMPLATE_VERSION}\n"
        in (c.elastic / "modeling_gisp_elastic.py").read_text()
    )
    for name, text in remote_code.render(remote_code.BaseFamily(**m["remote_code"]["base"]), elastic=True).items():
        assert (c.elastic / name).read_text() == text and "gisp_engine" not in text
    dense = load_pruned(c.per_step[0], device="cpu")
    weights = sum(p.numel() * p.element_size() for p in dense.model.parameters())
    assert weights <= folder_bytes(c.elastic) <= 1.05 * weights
    config = json.loads((c.elastic / "config.json").read_text())
    assert config["gisp_step"] is None and len(config["gisp_elastic"]["q_to_kv"]) == len(m["order"])


# ---- without the project -------------------------------------------------------------------------
# -I (no PYTHON* variables, no user site, no script dir), -S (no site: no .pth, so not the editable install)
ISOLATED = r"""
import importlib.util, json, sys
site_packages, jobs, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
sys.path.append(site_packages)
assert importlib.util.find_spec("gisp_engine") is None, "gisp_engine is importable"
assert not any(p.rstrip("/") == {root!r} for p in sys.path), sys.path
import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
transformers.utils.logging.set_verbosity_error()
results, tensors = {{}}, {{}}
for name, job in jobs.items():
    model = AutoModelForCausalLM.from_pretrained(job["dir"], trust_remote_code=True, **job["kwargs"])
    AutoTokenizer.from_pretrained(job["dir"], trust_remote_code=True)
    x = torch.tensor(job["x"])
    with torch.no_grad():
        tensors[name + ".logits"] = model(x).logits.float().contiguous()
        tensors[name + ".tokens"] = model.generate(x[:1], max_new_tokens=job["new_tokens"], do_sample=False,
                                                   pad_token_id=0).contiguous()
    results[name] = {{"class": type(model).__name__, "step": model.config.gisp_step,
                      "params": sum(p.numel() for p in model.parameters())}}
results["gisp_engine_imported"] = "gisp_engine" in sys.modules
save_file(tensors, out + ".safetensors")
open(out + ".json", "w").write(json.dumps(results))
""".format(root=str(PROJECT_ROOT))


def test_loads_without_the_project_at_every_step(cases, tmp_path):

    jobs, expected = {}, {}
    for case, c in cases.items():
        for step in range(STEPS + 1):
            jobs[f"{case_id(case)}.{step}"] = {
                "dir": str(c.elastic),
                "kwargs": {"gisp_step": step},
                "x": c.x.tolist(),
                "new_tokens": NEW_TOKENS,
            }
            expected[f"{case_id(case)}.{step}"] = (c, step)
    c = cases[("llama", True, "query")]
    sparsity = _manifest(c.elastic)["steps"][1]["param_sparsity"] + 1e-6
    for name, kwargs, step in (("default", {}, STEPS), ("sparsity", {"gisp_sparsity": sparsity}, 1)):
        jobs[name] = {"dir": str(c.elastic), "kwargs": kwargs, "x": c.x.tolist(), "new_tokens": NEW_TOKENS}
        expected[name] = (c, step)

    results, tensors = run_isolated(jobs, tmp_path, ISOLATED)
    assert results.pop("gisp_engine_imported") is False
    for name, (c, step) in expected.items():
        assert results[name]["class"] == "GispElasticForCausalLM" and results[name]["step"] == step
        assert results[name]["params"] == c.param_counts[step]
        torch.testing.assert_close(tensors[name + ".logits"], c.logits[step], rtol=1e-4, atol=1e-4)
        assert torch.equal(tensors[name + ".tokens"], c.tokens[step])


# ---- refusals ------------------------------------------------------------------------------------
def test_tampered_elastic_folders_are_refused(cases, tmp_path):
    c = cases[("llama", True, "query")]

    def refused(folder: Path, match: str, **kw) -> None:
        with pytest.raises(GispError, match=match):
            load_pruned(folder, device="cpu", **kw)

    d = shutil.copytree(c.elastic, tmp_path / "weights")
    blob = bytearray((d / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (d / "model.safetensors").write_bytes(bytes(blob))
    refused(d, "model.safetensors does not match", step=1)

    d = shutil.copytree(c.elastic, tmp_path / "config")
    config = json.loads((d / "config.json").read_text())
    config["gisp_elastic"]["steps"][1]["widths"][1][2] -= 1
    (d / "config.json").write_text(json.dumps(config))
    refused(d, "config.json does not match", step=1)

    for code in ("modeling_gisp_elastic.py", "configuration_gisp.py"):  # other code, vouched for by the manifest
        d = shutil.copytree(c.elastic, tmp_path / f"code-{code}")
        (d / code).write_text("raise SystemExit('not ours')\n")
        m = _manifest(d)
        m["files"][code] = hashlib.sha256((d / code).read_bytes()).hexdigest()
        (d / MANIFEST).write_text(json.dumps(m))
        refused(d, f"{code} is not the modeling code", step=1)

    d = shutil.copytree(c.elastic, tmp_path / "count-elastic")
    m = _manifest(d)
    m["steps"][2]["param_count"] += 1
    (d / MANIFEST).write_text(json.dumps(m))
    refused(d, "parameters, the manifest says", step=2)
    assert load_pruned(d, device="cpu", step=1).param_count == c.param_counts[1]


def test_elastic_export_refuses_bad_input(tiny_models, tmp_path):
    loaded = load_model(str(tiny_models[("mistral", True)]), dtype="float32")
    traj = synthetic_trajectory(loaded, "query")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(GispError, match="not empty and not a GISP export"):
        export_elastic(loaded, traj, tmp_path / "busy")
    with pytest.raises(GispError, match="bias compensation"):
        export_elastic(loaded, traj, tmp_path / "flap", bias_compensation=True)
    stranger = load_model(str(tiny_models[("mistral", False)]), dtype="float32")
    with pytest.raises(GispError, match="was built for model"):
        export_elastic(stranger, traj, tmp_path / "out")
    assert not (tmp_path / "flap").exists() and not (tmp_path / "out").exists()


def test_sharded_folder_loads_the_same(cases, tiny_models, tmp_path, monkeypatch):
    """A folder of several weight files (an index names each tensor's) loads each step as one file does."""
    import gisp_engine.export.elastic as elastic

    c = cases[("llama", True, "query")]
    monkeypatch.setattr(elastic, "SHARD_BYTES", 40_000)
    loaded = load_model(str(tiny_models[("llama", True)]), dtype="float32")
    folder = export_elastic(loaded, c.trajectory, tmp_path / "sharded").folder
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) > 2 and not (folder / "model.safetensors").exists()
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(weight_map.values()) == set(shards)
    for step in (0, STEPS):
        pruned = load_pruned(folder, device="cpu", dtype="float32", step=step)
        assert pruned.param_count == c.param_counts[step]
        with torch.no_grad():
            torch.testing.assert_close(pruned.model(c.x).logits, c.logits[step], rtol=1e-4, atol=1e-4)


def test_export_leaves_the_loaded_model_as_it_was(tiny_models, tmp_path):
    loaded = load_model(str(tiny_models[("qwen2", True)]), dtype="float32")
    before = {name: p.detach().clone() for name, p in loaded.model.named_parameters()}
    export_elastic(loaded, synthetic_trajectory(loaded, "query", seed=5), tmp_path / "elastic")
    after = dict(loaded.model.named_parameters())
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)


def test_cli_all_steps(tiny_models, tmp_path, capsys):
    from gisp_engine.cli import main

    folder = tiny_models[("qwen3", True)]
    traj = synthetic_trajectory(load_model(str(folder), dtype="float32"), "query", seed=7)
    traj_dir = traj.save(tmp_path / "trajectory")
    base = ["export", "--model", str(folder), "--trajectory", str(traj_dir), "--quiet"]
    out = tmp_path / "elastic"
    assert main(base + ["--all-steps", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kind"] == "elastic" and summary["last_step"] == traj.num_steps and summary["path"] == str(out)
    assert load_pruned(out, device="cpu", step=1).param_sparsity == pytest.approx(traj.steps[1].param_sparsity)
    assert main(base + ["--all-steps", "--step", "1", "--out", str(tmp_path / "both")]) == 2
    assert "--all-steps writes every step" in capsys.readouterr().err
    assert not (tmp_path / "both").exists()


# ---- the embedded model ---------------------------------------------------------------------------
@pytest.mark.real_model
def test_embedded_model_elastic_equals_per_step_exports(embedded_model_dir, tmp_path):
    """SmolLM2-135M, three steps: the elastic folder's logits and greedy tokens equal each per-step export's.

    float32 logits agree to 1e-4 of the logit scale (the rule of test_export's embedded test): the
    heads and channels are summed in another order, and this model's residual stream reaches ~3000.
    """
    loaded = load_model("smollm2-135m", device="cpu", dtype="float32")
    traj = synthetic_trajectory(loaded, "query", seed=3)
    x = loaded.tokenizer(
        ["The quick brown fox jumps over the lazy dog near the river bank."], return_tensors="pt"
    ).input_ids
    elastic = export_elastic(loaded, traj, tmp_path / "elastic").folder
    for step in (1, 2, 3):
        loaded = load_model("smollm2-135m", device="cpu", dtype="float32")
        per_step = export_subnetwork(loaded, traj, step, tmp_path / "step").folder
        del loaded
        one = load_pruned(per_step, device="cpu", dtype="float32")
        expected, expected_tokens = _outputs(one.model, x)
        del one
        if step == 2:  # lm-eval's HFLM, as `lm_eval --model hf --model_args pretrained=DIR,...,gisp_step=2`
            np.testing.assert_allclose(
                [ll for ll, _ in _hflm_logliks(elastic, gisp_step=step)],
                [ll for ll, _ in _hflm_logliks(per_step)],
                rtol=1e-5,
                atol=1e-3,
            )
        shutil.rmtree(per_step)
        pruned = load_pruned(elastic, device="cpu", dtype="float32", step=step)
        assert pruned.param_count == pruned.manifest["steps"][step]["param_count"]
        logits, tokens = _outputs(pruned.model, x)
        assert (logits - expected).abs().max() <= 1e-4 * expected.abs().max()
        assert torch.equal(tokens, expected_tokens)


# ---- lm-evaluation-harness ----------------------------------------------------------------------
LM_EVAL_REQUESTS = [
    ("The quick brown fox", " jumps over the lazy dog."),
    ("She sells", " sea shells by the sea shore."),
    ("", "In the beginning the universe was created."),
]


def _hflm_logliks(folder: Path, **model_args) -> list[tuple[float, bool]]:
    """Log-likelihoods as ``lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True,...``
    computes them."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    # lm-eval builds the model itself: from_pretrained(DIR, device_map={"": "cpu"}, max_memory=None, ...)
    lm = HFLM(pretrained=str(folder), trust_remote_code=True, device="cpu", dtype="float32", batch_size=2, **model_args)
    if "gisp_step" in model_args:
        assert (
            type(lm.model).__name__ == "GispElasticForCausalLM" and lm.model.config.gisp_step == model_args["gisp_step"]
        )
    requests = [
        Instance("loglikelihood", {}, (context, continuation), i)
        for i, (context, continuation) in enumerate(LM_EVAL_REQUESTS)
    ]
    return lm.loglikelihood(requests, disable_tqdm=True)


def test_lm_eval_hflm_on_an_elastic_folder_equals_the_per_step_export(cases):
    """lm-eval's own HFLM loads an elastic folder at a step (a one-device map) and scores as that step's export."""
    import_or_require("lm_eval")
    c = cases[("llama", True, "query")]
    for step in (1, STEPS):
        elastic = _hflm_logliks(c.elastic, gisp_step=step)
        per_step = _hflm_logliks(c.per_step[step])
        assert [greedy for _, greedy in elastic] == [greedy for _, greedy in per_step]
        np.testing.assert_allclose([ll for ll, _ in elastic], [ll for ll, _ in per_step], rtol=1e-5, atol=1e-4)


def test_a_device_map_of_one_device_is_that_device():
    from gisp_engine.export.remote_code.modeling_gisp_elastic import _device

    assert _device({"": "cpu"}) == _device("cpu") == _device(None) == torch.device("cpu")
    assert _device({"": 0}) == _device({"model": "cuda:0", "lm_head": 0}) == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="one device"):
        _device({"model": "cpu", "lm_head": "cuda:0"})
