"""Loading an export folder back: verified against its manifest, any kind (per-layer, uniform, elastic)."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import GispError
from ..model.loading import resolve_device, resolve_dtype
from .folder import (
    ELASTIC,
    GGUF,
    PER_LAYER,
    PrunedModel,
    adapter_for_manifest,
    check_widths,
    param_count,
    verify_export,
)


def load_pruned(
    folder: Path | str,
    device: str = "auto",
    dtype: str = "auto",
    base_weights_sha256: str | None = None,
    step: int | None = None,
    sparsity: float | None = None,
) -> PrunedModel:
    """Verify and load an export (any kind); ``base_weights_sha256`` also requires a given base model.

    ``step`` or ``sparsity`` (parameter sparsity, the last step at or below it) choose a step of an
    elastic export (default: its last step); a single-step export accepts only its own step.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder).expanduser().resolve()
    manifest = verify_export(folder)
    base_sha = manifest["base_model"].get("weights_sha256")
    if base_weights_sha256 is not None and base_sha != base_weights_sha256:
        raise GispError(
            f"{folder} was pruned from base weights {str(base_sha)[:12]}, not from {base_weights_sha256[:12]}"
        )
    if manifest["kind"] == GGUF:
        raise GispError(
            f"{folder} is a GGUF export for llama.cpp, not a transformers model: run it with "
            f"llama-cli -m {folder / manifest['gguf']['file']} (or gisp_engine.model.llamacpp.GGUFModel)"
        )
    if manifest["kind"] == ELASTIC:
        from .elastic import load_elastic

        return load_elastic(folder, manifest, device, dtype, step, sparsity)
    own = manifest["trajectory"]["step"]
    if sparsity is not None or (step is not None and step != own):
        raise GispError(f"{folder} holds step {own} only; export with --all-steps to choose any step from one folder")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    # the remote code was checked above to be this project's own rendering, byte for byte
    remote = manifest["kind"] == PER_LAYER
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, trust_remote_code=remote)
    model.to(dev).eval()
    count = param_count(model)
    if count != manifest["param_count"]:
        raise GispError(
            f"{folder}: the loaded model has {count} parameters, the manifest says {manifest['param_count']}"
        )
    adapter = adapter_for_manifest(manifest, model.config)
    check_widths(model, adapter, manifest, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, config=model.config)  # no second (remote) config load
    return PrunedModel(model, tokenizer, adapter, manifest, folder, dev, torch_dtype)
