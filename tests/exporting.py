"""Helpers for the export tests (per-layer, uniform, elastic, GGUF, Gemma): crafted trajectories without a pruning
run, the masked model's outputs to compare an export with, and a process that loads exports without this project."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import torch

from gisp_engine import StepRecord, Trajectory, load_model
from gisp_engine.core.settings import PROJECT_ROOT
from gisp_engine.model.loading import LoadedModel
from gisp_engine.model.structures import StructureSpace
from gisp_engine.model.surgery import mask_

CASES = [
    (family, gqa, policy)
    for family in ("llama", "mistral", "qwen2", "qwen3")
    for gqa in (True, False)
    for policy in (("query", "kv-group") if gqa else ("query",))
]


STEP = 3  # the point exported: every crafted removal below has happened by then


NEW_TOKENS = 6


def case_id(case) -> str:
    family, gqa, policy = case
    return f"{family}-{'gqa' if gqa else 'mha'}-{policy}"


def synthetic_trajectory(loaded: LoadedModel, gqa: str, seed: int = 0, steps: int = STEP) -> Trajectory:
    """A trajectory in the loaded model's structure space, without a pruning run.

    First and last layers are protected (never removed, never scored). Layer 1 loses every
    head; in layer 2 (GQA, query policy) only query head 0 goes, which leaves its KV groups
    unequal; layer 2 also loses all its channels at the last step. The rest is random.
    """
    g = loaded.geometry
    space = StructureSpace(g, gqa)
    rng = np.random.default_rng(seed)
    removal = np.full(space.size, -1, np.int32)
    protected = (space.layer == 0) | (space.layer == g.num_layers - 1)
    candidates = np.flatnonzero(~protected)
    chosen = rng.permutation(candidates)[: len(candidates) // 3]
    removal[chosen] = rng.integers(1, steps + 1, len(chosen))
    if g.num_layers >= 4:
        heads2 = space.head_slice(2)
        removal[space.head_slice(1)] = 1
        removal[heads2] = -1
        removal[heads2.start] = 1
        removal[space.channel_slice(2)] = steps
    score = rng.random(space.size).astype(np.float32)
    score[protected] = np.nan
    records = []
    for t in range(steps + 1):
        keep = (removal == -1) | (removal > t)
        records.append(
            StepRecord(
                t,
                float(1 - keep.mean()),
                space.param_sparsity(keep),
                0.0,
                int(space.linear_params_per_layer(keep).sum()),
            )
        )
    meta = {"key": f"synthetic-{gqa}-{seed}", "model": loaded.describe()}
    return Trajectory(meta, g, gqa, removal, score, records)


def keep_from_manifest(space: StructureSpace, manifest: dict) -> np.ndarray:
    keep = np.zeros(space.size, bool)
    for i, layer in enumerate(manifest["layers"]):
        units = layer["heads"] if space.gqa == "query" else layer["kv_heads"]
        keep[space.head_slice(i).start + np.asarray(units, int)] = True
        keep[space.channel_slice(i).start + np.asarray(layer["channels"], int)] = True
    return keep


def masked_outputs(folder: Path, space: StructureSpace, keep: np.ndarray, x: torch.Tensor):
    masked = load_model(str(folder), dtype="float32")
    mask_(masked.model, masked.adapter, space, keep)
    with torch.no_grad():
        logits = masked.model(x).logits
        tokens = masked.model.generate(x[:1], max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    return logits, tokens


# The no-project process: -I (no PYTHON* variables, no user site, no script dir), -S (no site, so
# no .pth files, so not the editable install of this project); only site-packages is added back.
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
transformers.utils.logging.disable_progress_bar()
results, tensors = {{}}, {{}}
for name, job in jobs.items():
    remote = job["remote"]
    model = AutoModelForCausalLM.from_pretrained(job["dir"], trust_remote_code=remote) if remote \
        else AutoModelForCausalLM.from_pretrained(job["dir"])
    AutoTokenizer.from_pretrained(job["dir"], trust_remote_code=remote)
    x = torch.tensor(job["x"])
    with torch.no_grad():
        tensors[name + ".logits"] = model(x).logits.float().contiguous()
        tensors[name + ".tokens"] = model.generate(x[:1], max_new_tokens=job["new_tokens"], do_sample=False,
                                                   pad_token_id=0).contiguous()
    results[name] = {{"class": type(model).__name__, "module": type(model).__module__,
                      "params": sum(p.numel() for p in model.parameters())}}
results["gisp_engine_imported"] = "gisp_engine" in sys.modules
save_file(tensors, out + ".safetensors")
open(out + ".json", "w").write(json.dumps(results))
""".format(root=str(PROJECT_ROOT))


def run_isolated(jobs: dict, workdir: Path, script: str = ISOLATED) -> tuple[dict, dict]:
    """``script`` (``ISOLATED`` or one of its kind: argv site-packages, jobs as JSON, output stem) run where this
    project cannot be imported; its JSON results and its tensors."""
    from safetensors.torch import load_file

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_MODULES_CACHE=str(workdir / "hf_modules"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    out = workdir / "results"
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script, sysconfig.get_paths()["purelib"], json.dumps(jobs), str(out)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(Path(str(out) + ".json").read_text()), load_file(str(out) + ".safetensors")


# ---- FLAP's bias compensation ----------------------------------------------------------------------
def flap_trajectory(loaded: LoadedModel, seed: int = 0) -> Trajectory:
    """The synthetic trajectory (layer 1 loses every head) as a FLAP one, with calibration input means."""
    from dataclasses import replace

    g = loaded.geometry
    rng = np.random.default_rng(seed)
    extras = {
        "input_mean_o": rng.normal(0, 1, (g.num_layers, g.num_heads * g.head_dim)).astype(np.float32),
        "input_mean_down": rng.normal(0, 1, (g.num_layers, g.intermediate_size)).astype(np.float32),
    }
    traj = synthetic_trajectory(loaded, "query", seed=seed)
    return replace(traj, meta={**traj.meta, "method": "flap"}, extras=extras)
