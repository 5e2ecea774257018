"""GGUF exports, checked by llama.cpp itself: its logits, greedy tokens and tokenization against transformers.

Every comparison runs the GGUF in llama.cpp (llama-cpp-python, pinned) with f32 weights, an F32 KV cache and
no flash attention, on the same token ids as the sliced model in transformers (an export slices the model
it is given, so after it ``loaded.model`` *is* the subnetwork). The runtime is part of ``make setup``: under
``GISP_REQUIRE_DATA=1`` (CI) a missing runtime fails these tests instead of skipping them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import yaml
from exporting import STEP, flap_trajectory, synthetic_trajectory
from needs import require
from tiny import cache_dir

from gisp_engine import GispError, load_model
from gisp_engine.cli import main
from gisp_engine.core import settings
from gisp_engine.core.fsutil import TMP_MARK
from gisp_engine.export.gguf import FAMILIES, even_groups, export_gguf, write_vocab_gguf
from gisp_engine.export.hf import load_pruned, verify_export
from gisp_engine.model import llamacpp
from gisp_engine.pruning.trajectory import Trajectory

# layer 2 of the synthetic trajectories loses every channel: torch warns when it builds the empty MLP
pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")

EXACT = 1e-3  # f32 weights, F32 KV cache: max |logit difference| allowed (measured: tiny 8e-6 to 4e-5, SmolLM2 4e-4)
# Gemma 3: llama.cpp computes GELU through an fp16 table (GGML_GELU_FP16) and rounds its attention differently
# from transformers: the dense tiny model (our tensors are bit for bit those of llama.cpp's own converter)
# differs by 1.3e-2, its uniform export by 2.1e-2, the dense Gemma 3 270M by 1.8e-2 (logits up to 35).
GEMMA_BAND = 5e-2
NEW_TOKENS = 32
THREADS = 1  # llama.cpp's threads too (see ``runtime``)
EXAMPLE = Path(__file__).parent.parent / "cache" / "examples" / "smollm2-135m-ppl-iterative"
PROJECT_CACHE = settings.cache_dir()


_require = require


@pytest.fixture(scope="module", autouse=True)
def runtime():
    if not llamacpp.available():
        _require(f"the llama.cpp runtime ({llamacpp.INSTALL_HINT}; make setup installs it)")
    llamacpp.runtime()
    # one thread on each side: these models are small, and spinning thread pools on a shared machine
    # cost far more than they give (a tiny model's comparison: 43 s with torch's default threads, 2 s with one)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- comparing the runtimes ----------------------------------------------------------------------
def hf_greedy(model: torch.nn.Module, ids: list[int], new_tokens: int) -> list[int]:
    """Argmax decoding in transformers through its KV cache (never stopping at an end token)."""
    out, tokens, cache = [], torch.tensor([ids]), None
    with torch.no_grad():
        for _ in range(new_tokens):
            step = model(tokens, cache=cache, use_cache=True)
            cache = step.cache
            out.append(int(step.logits[0, -1].argmax()))
            tokens = torch.tensor([[out[-1]]])
    return out


def compare(model: torch.nn.Module, gguf: Path, ids: list[int], new_tokens: int = NEW_TOKENS) -> dict:
    """llama.cpp against transformers on ``ids``: logit differences, top-1 agreement, greedy tokens."""
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].float().numpy()
    expected = hf_greedy(model, ids, new_tokens) if new_tokens else []
    with llamacpp.GGUFModel(gguf, n_ctx=len(ids) + new_tokens + 8, n_threads=THREADS) as runtime:
        got = runtime.logits(ids)
        tokens = runtime.greedy(ids, new_tokens) if new_tokens else []
    diff = np.abs(got - ref)
    return {
        "max": float(diff.max()),
        "mean": float(diff.mean()),
        "top1": float((got.argmax(-1) == ref.argmax(-1)).mean()),
        "greedy": tokens == expected,
        "tokens": tokens,
        "expected": expected,
    }


def random_ids(n: int = 40, seed: int = 1) -> list[int]:
    return torch.randint(0, 300, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def no_leftovers(out: Path) -> bool:
    """Nothing of a refused export: neither the folder nor a staging folder beside it."""
    return not out.exists() and not any(p.name.startswith(TMP_MARK) for p in out.parent.iterdir())


# ---- even GQA groups -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kv_of, n_kv, heads, kv_heads",
    [
        ([0, 0, 0, 1], 2, 6, 2),  # 3 + 1: pad to groups of 3 (8 heads) beats one KV per query (4 + 4)
        ([0, 1, 1, 1, 2, 2, 2], 3, 9, 3),  # 1 + 3 + 3: two dummies
        ([0, 0, 1, 1], 2, 4, 2),  # already even: written as it is
        ([0, 1, 1, 1, 1, 1, 1, 1, 1], 2, 12, 3),  # 1 + 8: groups of 4 (12 + 3) beat padding to 8 (16 + 2) and
        # tie groups of 2 (10 + 5), which cache more
        ([], 0, 0, 0),
    ],
)
def test_groups_are_made_even_at_the_least_cost(kv_of, n_kv, heads, kv_heads):
    q_slots, kv_slots = even_groups(kv_of, n_kv)
    assert (len(q_slots), len(kv_slots)) == (heads, kv_heads)
    if kv_slots:
        assert len(q_slots) % len(kv_slots) == 0
        size = len(q_slots) // len(kv_slots)
        # llama.cpp's mapping (h // group size) sends every kept head to its own KV head
        for h, p in enumerate(q_slots):
            if p >= 0:
                assert kv_slots[h // size] == kv_of[p]
    assert sorted(p for p in q_slots if p >= 0) == list(range(len(kv_of)))


def test_random_groups_never_give_llama_cpp_an_uneven_layer():
    rng = np.random.default_rng(0)
    for _ in range(300):
        counts = rng.integers(0, 9, rng.integers(1, 9))
        kv_of = [j for j, c in enumerate(counts) for _ in range(c)]
        q_slots, kv_slots = even_groups(kv_of, len(counts))
        assert not kv_slots or len(q_slots) % len(kv_slots) == 0
        cost = len(q_slots) + len(kv_slots)
        assert cost <= 2 * len(kv_of)  # never worse than one KV head per query head


# ---- every family, uniform: the stock llama.cpp architectures -----------------------------------
@pytest.mark.parametrize("family", list(FAMILIES))
def test_uniform_export_runs_in_llama_cpp_as_in_transformers(tiny_models, tmp_path, family):
    loaded = load_model(str(tiny_models[(family, True)]), dtype="float32")
    traj = synthetic_trajectory(loaded, "query")
    result = export_gguf(loaded, traj, STEP, tmp_path / "gguf", uniform=True, outtype="f32")
    m = result.manifest
    assert m["kind"] == "gguf" and m["gguf"]["layout"] == "uniform" and m["gguf"]["padding_overhead"] == 0
    assert m["gguf"]["arch"] == ("llama" if family in ("mistral", "qwen2") else family)  # qwen2: heads were cut
    assert m["uniform"]["heads"] < loaded.geometry.num_heads
    found = compare(loaded.model, result.gguf_path, random_ids())
    band = GEMMA_BAND if family == "gemma3" else EXACT
    assert found["max"] <= band and found["top1"] == 1.0 and found["greedy"], found
    verify_export(result.folder)


def test_qwen2_keeps_its_own_arch_when_every_head_stays(tiny_models, tmp_path):
    loaded = load_model(str(tiny_models[("qwen2", True)]), dtype="float32")
    result = export_gguf(loaded, synthetic_trajectory(loaded, "query"), 0, tmp_path / "q", uniform=True, outtype="f32")
    assert result.manifest["gguf"]["arch"] == "qwen2"
    found = compare(loaded.model, result.gguf_path, random_ids(), new_tokens=8)
    assert found["max"] <= EXACT and found["greedy"], found


# ---- per-layer: deci ----------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_per_layer_export_runs_in_llama_cpp_as_in_transformers(tiny_models, tmp_path, family):
    """The synthetic point has a layer with no heads (1), uneven GQA groups and no channels (2)."""
    loaded = load_model(str(tiny_models[(family, True)]), dtype="float32")
    traj = synthetic_trajectory(loaded, "query")
    result = export_gguf(loaded, traj, STEP, tmp_path / "gguf", outtype="f32")
    m = result.manifest
    assert m["gguf"]["arch"] == "deci" and m["gguf"]["layout"] == "per-layer"
    layers = [layer["gguf"] for layer in m["layers"]]
    assert layers[1]["head_count"] == 0 and layers[1]["head_count_kv"] == 0  # no heads: no attention at all
    assert m["layers"][2]["channels"] == [] and layers[2]["zero_channel"] and layers[2]["feed_forward_length"] == 1
    assert len(m["layers"][2]["heads"]) == 3 and layers[2]["dummy_heads"] == 1  # 1 + 2 over two KV heads: pad
    assert all(g["head_count"] % max(g["head_count_kv"], 1) == 0 for g in layers)
    assert m["gguf"]["linear_params"] > m["linear_params"]
    found = compare(loaded.model, result.gguf_path, random_ids())
    assert found["max"] <= EXACT and found["top1"] == 1.0 and found["greedy"], found
    assert verify_export(result.folder)["gguf"]["file"] == result.gguf_path.name


def test_aligned_widths_are_written_as_they_are_rounded(tiny_models, tmp_path):
    loaded = load_model(str(tiny_models[("llama", True)]), dtype="float32")
    result = export_gguf(loaded, synthetic_trajectory(loaded, "query"), STEP, tmp_path / "g", outtype="f32", align=16)
    widths = [len(layer["channels"]) for layer in result.manifest["layers"]]
    assert result.manifest["align"]["multiple"] == 16 and all(w % 16 == 0 for w in widths), widths
    # layer 2 keeps no channel: deci still gets its one zero channel
    assert [layer["gguf"]["feed_forward_length"] for layer in result.manifest["layers"]] == [48, 32, 1, 48]
    found = compare(loaded.model, result.gguf_path, random_ids(), new_tokens=8)
    assert found["max"] <= EXACT and found["greedy"], found


def test_flap_compensation_is_written_as_output_biases(tiny_models, tmp_path):
    """FLAP's o_proj/down_proj biases are deci's (and llama's) attn_output/ffn_down biases; a layer with no
    heads left carries its constant through one zero head."""
    folder = tiny_models[("llama", True)]
    loaded = load_model(str(folder), dtype="float32")
    result = export_gguf(loaded, flap_trajectory(loaded), STEP, tmp_path / "per-layer", outtype="f32")
    assert result.manifest["bias_compensation"] is True
    assert result.manifest["layers"][1]["heads"] == [] and result.manifest["layers"][1]["gguf"]["head_count"] == 1
    found = compare(loaded.model, result.gguf_path, random_ids())  # loaded.model: sliced, with the biases
    assert found["max"] <= EXACT and found["greedy"], found
    biases = {
        t.name: np.abs(t.data).max() for t in gguf.GGUFReader(result.gguf_path).tensors if t.name.endswith(".bias")
    }
    assert biases["blk.1.attn_output.bias"] > 0 and biases["blk.2.ffn_down.bias"] > 0

    loaded = load_model(str(folder), dtype="float32")
    uniform = export_gguf(loaded, flap_trajectory(loaded), STEP, tmp_path / "uniform", uniform=True, outtype="f32")
    assert uniform.manifest["gguf"]["arch"] == "llama" and uniform.manifest["bias_compensation"] is True
    found = compare(loaded.model, uniform.gguf_path, random_ids(), new_tokens=8)
    assert found["max"] <= EXACT and found["greedy"], found


def test_runtime_decodes_the_same_without_every_logit_and_quotes_llama_cpp_on_failure(tiny_models, tmp_path):
    """The timing mode (``logits_all=False``: only the last token's logits) decodes as the checking mode,
    and a file llama.cpp refuses gives one line with llama.cpp's own reason."""
    loaded = load_model(str(tiny_models[("llama", True)]), dtype="float32")
    result = export_gguf(loaded, synthetic_trajectory(loaded, "query"), STEP, tmp_path / "g", outtype="f32")
    ids = random_ids(24)
    with (
        llamacpp.GGUFModel(result.gguf_path, n_ctx=64, n_threads=THREADS) as every,
        llamacpp.GGUFModel(result.gguf_path, n_ctx=64, n_threads=THREADS, logits_all=False) as last,
    ):
        logits = every.logits(ids)
        last.eval(ids)
        np.testing.assert_allclose(last.last_logits(), logits[-1], atol=1e-5)
        assert last.greedy(ids, 12) == every.greedy(ids, 12)
        with pytest.raises(GispError, match="opened without logits_all"):
            last.logits(ids)
    bad = tmp_path / "bad.gguf"
    data = bytearray(result.gguf_path.read_bytes())
    bad.write_bytes(bytes(data[: len(data) // 2]))  # the tensors cut short
    with pytest.raises(GispError, match=r"llama.cpp cannot load .*bad.gguf: .*") as info:
        llamacpp.GGUFModel(bad, n_ctx=32)
    assert "\n" not in str(info.value)


# ---- refusals: one line, nothing left behind ----------------------------------------------------
def test_what_llama_cpp_cannot_hold_is_refused_before_anything_is_written(tiny_models, tmp_path, monkeypatch):
    cases = [
        (("llama", True), dict(outtype="q9_z"), "unknown --outtype 'q9_z'"),
        (("qwen3", True), {}, "Qwen3's q/k norms.*--uniform"),
        (("gemma3", True), {}, "Gemma 3's q/k norms.*--uniform"),
    ]
    for i, (key, kwargs, message) in enumerate(cases):
        loaded = load_model(str(tiny_models[key]), dtype="float32")
        out = tmp_path / f"refused{i}"
        with pytest.raises(GispError, match=message) as info:
            export_gguf(loaded, synthetic_trajectory(loaded, "query"), STEP, out, **kwargs)
        assert "\n" not in str(info.value) and no_leftovers(out)
    loaded = load_model(str(tiny_models[("qwen2", True)]), dtype="float32")
    out = tmp_path / "flap"
    with pytest.raises(GispError, match="no o_proj/down_proj biases .* --no-bias-compensation"):
        export_gguf(loaded, flap_trajectory(loaded), STEP, out, uniform=True)
    assert no_leftovers(out)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(GispError, match="not a GISP export"):
        export_gguf(loaded, synthetic_trajectory(loaded, "query"), STEP, taken)
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    # the k-quants need llama.cpp itself: without it, one line naming the install
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    out = tmp_path / "no-runtime"
    with pytest.raises(GispError, match=r"llama.cpp runtime is not installed.*pip install llama-cpp-python==0\.3\.36"):
        export_gguf(loaded, synthetic_trajectory(loaded, "query"), STEP, out, outtype="q4_k_m")
    assert no_leftovers(out)


def test_cli_gguf_export_and_its_refusals(tiny_models, tmp_path, capsys):
    loaded = load_model(str(tiny_models[("llama", True)]), dtype="float32")
    traj = synthetic_trajectory(loaded, "query")
    folder = traj.save(tmp_path / "traj")
    base = ["export", "--trajectory", str(folder), "--model", str(tiny_models[("llama", True)]), "--step", "3"]
    assert (
        main([*base, "--out", str(tmp_path / "g"), "--format", "gguf", "--outtype", "q8_0", "--json", "--quiet"]) == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["arch"] == "deci" and summary["outtype"] == "q8_0" and Path(summary["gguf"]).is_file()
    files = sorted(p.name for p in (tmp_path / "g").iterdir())
    assert files == sorted([Path(summary["gguf"]).name, "Modelfile", "README.md", "gisp_manifest.json"])
    card = (tmp_path / "g" / "README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])  # the Hugging Face metadata header
    assert header["base_model"] == str(tiny_models[("llama", True)]) and "gguf" in header["tags"]
    assert header["gisp"]["trajectory"] == traj.key and header["gisp"]["step"] == 3
    assert header["gisp"]["param_sparsity"] == pytest.approx(summary["param_sparsity"], abs=1e-6)
    assert f"FROM ./{Path(summary['gguf']).name}" in (tmp_path / "g" / "Modelfile").read_text()
    with pytest.raises(GispError, match="GGUF export for llama.cpp"):
        load_pruned(tmp_path / "g")
    for extra, message in (
        (["--format", "gguf", "--outtype", "q9"], "unknown --outtype"),
        (["--outtype", "f16"], "--outtype is the GGUF file's type"),
        (["--format", "gguf", "--all-steps"], "writes one step"),
    ):
        args = [a for a in base if a not in ("--step", "3")] if "--all-steps" in extra else base
        assert main([*args, "--out", str(tmp_path / "x"), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
        assert no_leftovers(tmp_path / "x")


def test_a_changed_gguf_folder_is_refused(tiny_models, tmp_path):
    loaded = load_model(str(tiny_models[("llama", True)]), dtype="float32")
    result = export_gguf(loaded, synthetic_trajectory(loaded, "query"), STEP, tmp_path / "g", outtype="f16")
    verify_export(result.folder)
    with result.gguf_path.open("r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\1\2\3")
    with pytest.raises(GispError, match="does not match the export manifest"):
        verify_export(result.folder)


# ---- the embedded SmolLM2: the example trajectory's step 6, every outtype -----------------------
# Measured on the 64 WikiText-2 tokens below against the f32 sliced model in transformers: max and mean
# |logit difference| and the share of positions with the same top-1 (logits reach 36). The bands allow about
# twice the measured error. q8_0 is llama.cpp's own: its quantizer gives the same file and the same logits.
OUTTYPE_BANDS = {  # outtype: (max, mean, top-1 at least)   measured: max, mean, top-1, MiB
    "f32": (1e-3, 1e-4, 1.0),  # 4.0e-4, 1e-5, 1.0, 392
    "f16": (0.3, 0.02, 0.95),  # 0.13, 0.0077, 1.0, 197
    "bf16": (1.5, 0.12, 0.9),  # 0.66, 0.055, 0.969, 197
    "q8_0": (13.0, 0.45, 0.8),  # 6.4, 0.22, 0.906, 117 (rows not a multiple of 32 stay F16)
    "q4_k_m": (36.0, 2.4, 0.65),  # 18.2, 1.19, 0.828, 96
}


@pytest.fixture(scope="module")
def smollm_step6(embedded_model_dir, tmp_path_factory):
    """The example's step 6 (uneven GQA groups in most layers), sliced, and 64 WikiText-2 tokens."""
    from gisp_engine.data.text import wikitext2_test_text

    if not EXAMPLE.is_dir():
        _require(f"the example trajectory {EXAMPLE}")
    traj = Trajectory.load(EXAMPLE)
    with cache_dir(PROJECT_CACHE):  # the embedded model by its name: its export copies its own GGUF's tokenizer
        loaded = load_model("smollm2-135m", dtype="float32")
    text, _ = wikitext2_test_text()
    ids = loaded.tokenizer(text[:2000])["input_ids"][:64]
    result = export_gguf(loaded, traj, 6, tmp_path_factory.mktemp("smollm") / "f32", outtype="f32")
    return traj, loaded, ids, result


@pytest.mark.real_model
def test_smollm2_per_layer_step6_in_llama_cpp(smollm_step6):
    traj, loaded, ids, result = smollm_step6
    m = result.manifest
    uneven = [
        i
        for i, layer in enumerate(m["layers"])
        if layer["gguf"]["dummy_heads"] or layer["gguf"]["head_count_kv"] != len(layer["kv_heads"])
    ]
    assert m["gguf"]["arch"] == "deci" and len(uneven) >= 10
    assert m["gguf"]["tokenizer"]["pre"] == "smollm" and m["gguf"]["tokenizer"]["source"].startswith("embedded-gguf")
    card = yaml.safe_load((result.folder / "README.md").read_text().split("---\n")[1])
    assert card["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "wikitext2" in {e["task"] for e in card["gisp"]["evaluations"]}  # what the example ships for step 6
    assert 0 < m["gguf"]["padding_overhead"] < 0.05  # measured 3.1% of the decoder linear weights
    found = compare(loaded.model, result.gguf_path, ids)
    assert found["max"] <= EXACT and found["top1"] == 1.0 and found["greedy"], found


@pytest.mark.real_model
@pytest.mark.parametrize("outtype", [o for o in OUTTYPE_BANDS if o != "f32"])
def test_smollm2_outtypes_within_their_bands(smollm_step6, tmp_path, outtype):
    traj, sliced, ids, _ = smollm_step6
    loaded = load_model("smollm2-135m", dtype="float32")
    result = export_gguf(loaded, traj, 6, tmp_path / outtype, outtype=outtype)
    found = compare(sliced.model, result.gguf_path, ids, new_tokens=0)
    most, mean, top1 = OUTTYPE_BANDS[outtype]
    print(
        f"{outtype}: max {found['max']:.4g} mean {found['mean']:.4g} top-1 {found['top1']:.3f} "
        f"{result.manifest['gguf']['file_bytes'] / 2**20:.1f} MiB"
    )
    assert found["max"] <= most and found["mean"] <= mean and found["top1"] >= top1, found
    if outtype == "q4_k_m":
        assert "llama_model_quantize" in result.manifest["gguf"]["quantized_by"]


# ---- tokenizers: llama.cpp's ids are transformers' ----------------------------------------------
def wikitext_rows(n: int = 200) -> list[str]:
    from gisp_engine.data.text import wikitext2_test_text

    text, _ = wikitext2_test_text()
    return text.split("\n\n")[:n]


@pytest.mark.real_model
@pytest.mark.parametrize(
    "model, from_tokenizer_json",
    [
        ("smollm2-135m", False),
        ("smollm2-135m", True),
        ("gemma3-270m", False),
    ],
)
def test_llama_cpp_tokenizes_as_transformers(model, from_tokenizer_json, tmp_path, request):
    """200 WikiText-2 rows: the embedded models' own GGUF tokenizer (what their exports carry), and
    SmolLM2's written from its tokenizer.json (the path of hub models; pre-tokenizer ``smollm``)."""
    from transformers import AutoTokenizer

    folder = request.getfixturevalue("embedded_model_dir" if model == "smollm2-135m" else "embedded_gemma_dir")
    record = write_vocab_gguf(model, tmp_path / "vocab.gguf", from_tokenizer_json)
    assert record.source == ("tokenizer.json" if from_tokenizer_json else f"embedded-gguf ({model})")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = wikitext_rows()
    with llamacpp.GGUFVocab(tmp_path / "vocab.gguf") as vocab:
        mismatched = [r for r in rows if vocab.tokenize(r) != tokenizer(r)["input_ids"]]
    assert len(rows) == 200 and mismatched == []


# ---- the Export page ------------------------------------------------------------------------------
def test_export_page_writes_a_gguf_and_shows_how_to_run_it(tiny_models, data_dir, isolated_cache, tmp_path):
    from apptest import no_errors, open_page

    from gisp_engine import PruneConfig, prune

    run = prune(
        PruneConfig(
            model=str(tiny_models[("llama", True)]),
            steps=2,
            max_sparsity=0.5,
            num_samples=4,
            seq_len=32,
            protect_first=1,
            dtype="float32",
            batch_size=4,
        )
    )
    at = open_page("pages/5_Export.py", select=str(run.path))
    at.radio(key="export_format").set_value("GGUF for llama.cpp and Ollama").run()
    at.select_slider[0].set_value(2).run()
    assert not at.text_input  # the export goes into the cache's exports/; a browser names no folder
    at.selectbox(key="export_outtype").set_value("q8_0")
    at.button[0].click().run()
    no_errors(at)
    summary = at.session_state["export_last"]
    out = Path(summary["path"])
    assert out.parent == settings.cache_dir() / "exports"
    manifest = verify_export(out)
    assert manifest["kind"] == "gguf" and manifest["gguf"]["outtype"] == "q8_0" and manifest["trajectory"]["step"] == 2
    gguf_file = manifest["gguf"]["file"]
    assert Path(summary["download"]) == out / gguf_file  # the download is the .gguf itself
    code = " ".join(c.value for c in at.code)
    assert f"llama-cli -m {gguf_file}" in code and "ollama create gisp-step2 -f Modelfile" in code
    with llamacpp.GGUFModel(out / gguf_file, n_ctx=32) as opened:  # llama.cpp opens what the page wrote
        assert opened.n_vocab == manifest["gguf"].get("vocab_size", opened.n_vocab) > 0
