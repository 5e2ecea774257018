"""What must hold on an accelerator as on the CPU, run on every device this machine has (``-m gpu`` selects them).

On a CPU-only machine (CI) each test runs on the CPU; on a GPU machine (``benchmarks/gpu_check.sh``)
on the CPU and on CUDA, where scoring, float32 gradient sums of a bf16 model, slicing and export
loading meet kernels the CPU never runs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gisp_engine import PruneConfig, apply_step, load_model, load_pruned
from gisp_engine.export.hf import export_subnetwork
from gisp_engine.model.structures import StructureSpace
from gisp_engine.model.surgery import full_layout
from gisp_engine.pruning.importance import score_structures
from gisp_engine.pruning.objectives import objective_spec
from gisp_engine.pruning.pruner import plan, prune

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> str:
    """Calibration text of its own (one document a line), so that a bare GPU machine needs no data dir."""
    from tiny import _SAMPLE_TEXT

    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text("\n".join(f"{i}. {_SAMPLE_TEXT}" for i in range(60)) + "\n")
    return str(path)


def _scores(folder, calib: str, device: str, dtype: str) -> tuple[np.ndarray, float]:
    loaded = load_model(str(folder), device, dtype)
    config = PruneConfig(model=str(folder), calib=calib, num_samples=4, seq_len=32, batch_size=2, protect_first=1)
    objective = objective_spec("perplexity").build(loaded, config)
    space = StructureSpace(loaded.geometry, "query")
    result = score_structures(loaded.model, loaded.adapter, space, full_layout(space), objective, [1, 2])
    return result.raw, result.loss


@pytest.mark.parametrize("device", DEVICES)
def test_scores_on_the_device_equal_the_cpu_float32_scores(tiny_llama, calib, device):
    cpu, cpu_loss = _scores(tiny_llama, calib, "cpu", "float32")
    here, loss = _scores(tiny_llama, calib, device, "float32")
    present = ~np.isnan(cpu)
    np.testing.assert_array_equal(present, ~np.isnan(here))
    np.testing.assert_allclose(here[present], cpu[present], rtol=2e-3, atol=1e-9)
    assert loss == pytest.approx(cpu_loss, rel=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_scoring_with_float32_sums_gives_nested_steps(tiny_llama, calib, device):
    config = PruneConfig(
        model=str(tiny_llama),
        calib=calib,
        num_samples=8,
        seq_len=32,
        batch_size=2,
        steps=3,
        max_sparsity=0.4,
        protect_first=1,
        dtype="bfloat16",
        device=device,
    )
    traj = prune(config, use_cache=False).trajectory
    assert traj.meta["model"]["dtype"] == "bfloat16" and traj.meta["device"].startswith(device)
    masks = [traj.keep_mask(t) for t in range(4)]
    assert all((later <= earlier).all() for earlier, later in zip(masks, masks[1:]))
    assert all(np.isfinite(s.loss) for s in traj.steps)


@pytest.mark.parametrize("device", DEVICES)
def test_sliced_masked_and_exported_models_agree_on_the_device(tiny_models, calib, tmp_path, device):
    folder = tiny_models[("gemma3", True)]  # q/k norms, one KV head, sliding windows: the least Llama-like family
    config = PruneConfig(
        model=str(folder),
        calib=calib,
        num_samples=4,
        seq_len=32,
        steps=2,
        max_sparsity=0.4,
        protect_first=1,
        device=device,
        dtype="float32",
    )
    traj = prune(config).trajectory
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0)).to(device)
    masked = load_model(str(folder), device, "float32")
    apply_step(masked, traj, 2, physical=False)
    sliced = load_model(str(folder), device, "float32")
    export_subnetwork(sliced, traj, 2, tmp_path / "export")
    pruned = load_pruned(tmp_path / "export", device=device, dtype="float32")
    with torch.no_grad():
        want = masked.model(input_ids=ids).logits
        torch.testing.assert_close(sliced.model(input_ids=ids).logits, want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(pruned.model(input_ids=ids).logits, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_the_dry_run_estimates_the_device_it_names(tiny_llama, calib, device):
    from gisp_engine.pruning import plan_estimate

    config = PruneConfig(model=str(tiny_llama), calib=calib, num_samples=4, seq_len=32, device=device)
    result = plan_estimate.dry_run(plan(config))
    assert result.memory.device.startswith(device) and result.fits
    assert result.memory.dtype == ("bfloat16" if device == "cuda" else "float32")  # auto
    assert (result.memory.part("runtime") > 0) == (device == "cpu")  # the CUDA allocator's peak leaves it out
