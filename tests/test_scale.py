"""Llama-3.2-1B's geometry, 2 layers deep: a 128,256-entry vocabulary with tied embeddings, 32 query heads
over 8 KV heads, an 8192-wide MLP and Llama 3 RoPE scaling, end to end (the full 16 layers: bench_scale.py).

Dry run, 2 pruning steps, the per-layer, uniform and elastic exports, ``load_pruned`` of each: the
per-layer and the elastic folder give the logits of the engine's own sliced model at that step.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _geometries import geometry_config, write_random_model  # noqa: E402

from gisp_engine import PruneConfig, load_model, load_pruned
from gisp_engine.export.elastic import export_elastic  # noqa: E402
from gisp_engine.export.hf import export_subnetwork  # noqa: E402
from gisp_engine.pruning import plan_estimate  # noqa: E402
from gisp_engine.pruning.pruner import plan, prune  # noqa: E402

DTYPE = "float32"


@pytest.fixture(scope="module")
def llama1b_2layers(tmp_path_factory) -> Path:
    return write_random_model("llama-3.2-1b", tmp_path_factory.mktemp("scale") / "llama-3.2-1b-2l", layers=2)


def test_the_geometry_is_llama_3_2_1b(llama1b_2layers):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(llama1b_2layers)
    want = geometry_config("llama-3.2-1b")
    assert (
        config.hidden_size,
        config.intermediate_size,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.head_dim,
        config.vocab_size,
    ) == (2048, 8192, 32, 8, 64, 128256)
    assert config.tie_word_embeddings and config.max_position_embeddings == 131072
    rope = config.rope_parameters
    assert rope["rope_type"] == "llama3" and rope["rope_theta"] == 500000.0
    assert {k: rope[k] for k in want["rope_scaling"]} == want["rope_scaling"]


def test_prune_export_and_load_at_1b_geometry(llama1b_2layers, data_dir, tmp_path):
    # float32: on a CPU without native bf16 (AVX2) bf16 matmuls run ~60x slower, and the 128k head's backward in
    # bf16 made this test take most of an hour; float32 is 1.5 GB of weights here, and the exports are float32 too
    config = PruneConfig(
        model=str(llama1b_2layers), num_samples=2, seq_len=64, steps=2, max_sparsity=0.2, batch_size=1, dtype=DTYPE
    )
    dry = plan_estimate.dry_run(plan(config))
    assert dry.micro_batches == 2 and dry.model["vocab_size"] == 128256 and dry.model["tied_embeddings"]
    assert dry.memory.part("gradient sums") > 0 and dry.memory.part("head") > 0

    traj = prune(config).trajectory
    assert traj.num_steps == 2 and all(np.isfinite(s.loss) for s in traj.steps)
    assert traj.steps[2].param_sparsity > 0.1

    loaded = load_model(str(llama1b_2layers), "cpu", DTYPE)  # the exports keep the loaded model's dtype
    ids = torch.randint(0, 128256, (1, 24), generator=torch.Generator().manual_seed(0))
    folders = {kind: tmp_path / kind for kind in ("elastic", "per-layer", "uniform")}
    export_elastic(loaded, traj, folders["elastic"])  # leaves the model dense
    export_subnetwork(loaded, traj, 2, folders["per-layer"])  # slices it in place
    with torch.no_grad():
        reference = loaded.model(input_ids=ids).logits.float()  # the engine's own model at step 2
    export_subnetwork(load_model(str(llama1b_2layers), "cpu", DTYPE), traj, 2, folders["uniform"], uniform=True)
    logits = {}
    for kind, folder in folders.items():
        pruned = load_pruned(folder, device="cpu", dtype=DTYPE, **({"step": 2} if kind == "elastic" else {}))
        assert pruned.dtype == torch.float32
        assert pruned.manifest["base_model"]["weights_sha256"] == traj.meta["model"]["weights_sha256"]
        with torch.no_grad():
            logits[kind] = pruned.model(input_ids=ids).logits.float()
        assert torch.isfinite(logits[kind]).all() and logits[kind].shape[-1] == 128256
        del pruned
    torch.testing.assert_close(logits["per-layer"], reference, rtol=0, atol=1e-4)
    torch.testing.assert_close(logits["elastic"], logits["per-layer"], rtol=0, atol=1e-4)
    assert (logits["uniform"] - reference).abs().max() > 0  # uniform widths are another subnetwork
