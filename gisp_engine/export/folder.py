"""What an export folder is, and how it is checked: its kinds, manifest and verification.

Shared by the writers (:mod:`gisp_engine.export.hf`, :mod:`gisp_engine.export.elastic`) and the loader
(:mod:`gisp_engine.export.load`); see :mod:`gisp_engine.export.hf` for the two single-step kinds.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import re
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core import serving
from ..core.errors import GispError
from ..core.fsutil import TMP_MARK, atomic_write_json, sha256_file, umask
from ..core.progress import ProgressCallback, ProgressEvent
from ..core.settings import ENGINE_VERSION
from ..model.adapters import DecoderAdapter, adapter_for_config
from ..model.loading import LoadedModel
from ..model.surgery import linear_weight_count
from ..pruning.subnetwork import check_compatible
from . import remote_code

FORMAT = "gisp-export"
VERSION = 1
MANIFEST = "gisp_manifest.json"
PER_LAYER = "per-layer"
UNIFORM = "uniform"
ELASTIC = "elastic"  # every step of a trajectory in one folder: see gisp_engine/export/elastic.py
GGUF = "gguf"  # one GGUF file for llama.cpp (per-layer or uniform): see gisp_engine/export/gguf.py


@dataclass
class PrunedModel:
    """An export loaded back: the model (eval mode), its tokenizer and the verified manifest."""

    model: torch.nn.Module
    tokenizer: object
    adapter: DecoderAdapter
    manifest: dict
    folder: Path
    device: torch.device
    dtype: torch.dtype

    @property
    def param_count(self) -> int:
        return param_count(self.model)

    @property
    def param_sparsity(self) -> float:
        return float(self.manifest["param_sparsity"])


# ---- the folder ----------------------------------------------------------------------------
def base_family(loaded: LoadedModel) -> remote_code.BaseFamily:
    """Where the loaded model's classes live in transformers (what the remote code subclasses)."""
    cls, config_cls = type(loaded.model), type(loaded.model.config)
    module = cls.__module__
    if not module.startswith("transformers.models.") or not cls.__name__.endswith("ForCausalLM"):
        raise GispError(f"{cls.__name__} ({module}) is not a stock transformers causal LM: it cannot be exported")
    prefix = cls.__name__.removesuffix("ForCausalLM")
    modeling = importlib.import_module(module)
    missing = [name for name in ("Attention", "MLP") if not hasattr(modeling, prefix + name)]
    if missing:
        raise GispError(f"{module} has no {', '.join(prefix + m for m in missing)}: this family cannot be exported")
    return remote_code.BaseFamily(
        model_type=loaded.model.config.model_type,
        config_module=config_cls.__module__,
        config_class=config_cls.__name__,
        modeling_module=module,
        class_prefix=prefix,
    )


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() counts tied weights once


def manifest_json(manifest: dict) -> str:
    """Indented JSON with every list of numbers on one line (the kept channels run into thousands)."""
    text = json.dumps(manifest, indent=1)
    return (
        re.sub(r"\[\s*((?:-?\d+,\s*)*-?\d+)\s*\]", lambda m: "[" + re.sub(r",\s*", ", ", m.group(1)) + "]", text) + "\n"
    )


EXPORT_STAGES = 5  # the progress stages of every export (``ExportStart.report``)


@dataclass
class ExportStart:
    """What every export establishes first: the folder, the base family, a stage reporter."""

    out: Path
    family: remote_code.BaseFamily
    report: Callable[[int, str], None]


def start_export(
    loaded: LoadedModel, trajectory, out_dir: Path | str, progress: ProgressCallback, slices_in_place: bool
) -> ExportStart:
    """The checks every export makes before it writes anything: this process may write (an app that is a viewer
    may not, whoever calls), the folder can take an export, the model is the trajectory's, it is a stock
    transformers causal LM, and it is still dense."""
    serving.require_changes("an export")
    out = Path(out_dir).expanduser()
    check_out_dir(out)
    check_compatible(loaded, trajectory)
    family = base_family(loaded)
    if linear_weight_count(loaded.model, loaded.adapter) != trajectory.space.total_linear_params():
        why = " (it slices it in place)" if slices_in_place else ""
        raise GispError(f"export needs the dense model as loaded{why}: load the model again")

    def report(done: int, message: str) -> None:
        progress(ProgressEvent("export", done, EXPORT_STAGES, message="export", info={"stage": message}))

    return ExportStart(out, family, report)


def write_config_and_code(folder: Path, loaded: LoadedModel, config: dict, code: dict[str, str]) -> None:
    """The tokenizer, ``config.json`` and the remote code files of an export."""
    loaded.tokenizer.save_pretrained(folder)
    atomic_write_json(folder / "config.json", config)
    for name, text in code.items():
        (folder / name).write_text(text, encoding="utf-8")


def hash_files(folder: Path) -> dict[str, str]:
    """SHA-256 of every file of an export, made readable as the umask allows (some writers create 0600
    files; an export is for sharing)."""
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(TMP_MARK):
            os.chmod(path, 0o666 & ~umask())
            files[path.name] = sha256_file(path)
    return files


def manifest_head(kind: str, loads_with: str, loaded: LoadedModel, trajectory) -> dict:
    """The fields every manifest opens with; the caller adds its own (and to ``trajectory``)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "loads_with": loads_with,
        "base_model": loaded.describe(),
        "trajectory": {
            "key": trajectory.key,
            "path": str(trajectory.path) if trajectory.path else None,
            "gqa": trajectory.gqa,
            "objective": trajectory.meta.get("objective", {}).get("objective"),
        },
        "engine_version": ENGINE_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise GispError(f"--out {out} is a file: give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise GispError(f"refusing to replace {out}: it is not empty and not a GISP export; choose a new folder")


# ---- verify and load -----------------------------------------------------------------------
def verify_export(folder: Path | str) -> dict:
    """Check an export folder against its manifest without loading weights; return the manifest."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise GispError(f"export folder {folder} does not exist")
    path = folder / MANIFEST
    if not path.is_file():
        raise GispError(f"{folder} is not a GISP export (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise GispError(f"corrupt export manifest {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise GispError(f"{path} is not a GISP export manifest (format is not {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise GispError(f"{path}: export format version {manifest.get('version')!r}, this engine reads {VERSION}")
    files = manifest.get("files")
    # a GGUF folder's main file is the .gguf its manifest names; every other kind has a config.json
    main = (manifest.get("gguf") or {}).get("file") if manifest.get("kind") == GGUF else "config.json"
    if not isinstance(files, dict) or main not in files:
        raise GispError(f"corrupt export manifest {path}: no file list")
    for name, digest in files.items():
        if Path(name).name != name or name == MANIFEST:
            raise GispError(f"corrupt export manifest {path}: bad file name {name!r}")
        if not (folder / name).is_file():
            raise GispError(f"export {folder} is incomplete: {name} is missing")
        if sha256_file(folder / name) != digest:
            raise GispError(
                f"{folder / name} does not match the export manifest: the folder was changed after export "
                "(or mixes two exports); export it again"
            )
    extra = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and p.name != MANIFEST and p.name not in files and not p.name.startswith(".")
    )
    if extra:
        raise GispError(f"export {folder} holds files the export did not write: {', '.join(extra)}; remove them")
    if manifest.get("kind") in (PER_LAYER, ELASTIC):
        try:
            family = remote_code.BaseFamily(**manifest["remote_code"]["base"])
        except (KeyError, TypeError):
            raise GispError(f"corrupt export manifest {path}: no remote-code record") from None
        elastic = manifest["kind"] == ELASTIC
        for name, text in remote_code.render(family, elastic=elastic).items():
            if name not in files or (folder / name).read_bytes() != text.encode("utf-8"):
                raise GispError(
                    f"{folder / name} is not the modeling code this GISP Explorer writes "
                    f"(template version {remote_code.template_version(elastic)}): export the subnetwork again"
                )
    elif manifest.get("kind") not in (UNIFORM, GGUF):
        raise GispError(f"corrupt export manifest {path}: unknown kind {manifest.get('kind')!r}")
    return manifest


def adapter_for_manifest(manifest: dict, config) -> DecoderAdapter:
    base_type = manifest["base_model"]["model_type"]
    # the remote-code config names its own model_type; the modules are the base family's
    # (every field of the config, since families name their activation differently: hidden_act, hidden_activation)
    return adapter_for_config(types.SimpleNamespace(**{**config.to_dict(), "model_type": base_type}))


def check_widths(model: torch.nn.Module, adapter: DecoderAdapter, manifest: dict, folder: Path) -> None:
    head_dim = int(manifest["base_model"]["geometry"]["head_dim"])
    layers = adapter.layers(model)
    if len(layers) != len(manifest["layers"]):
        raise GispError(f"{folder}: the model has {len(layers)} layers, the manifest {len(manifest['layers'])}")
    linear = 0
    for i, (layer, kept) in enumerate(zip(layers, manifest["layers"])):
        mlp = adapter.mlp(layer)
        found = {"channels": mlp.gate.out_features}
        expected = {"channels": len(kept["channels"])}
        linear += sum(m.weight.numel() for m in (mlp.gate, mlp.up, mlp.down))
        if kept["heads"]:
            lin = adapter.attention(layer)
            found.update(heads=lin.q.out_features // head_dim, kv_heads=lin.k.out_features // head_dim)
            expected.update(heads=len(kept["heads"]), kv_heads=len(kept["kv_heads"]))
            linear += sum(m.weight.numel() for m in (lin.q, lin.k, lin.v, lin.o))
        if found != expected:
            raise GispError(f"{folder}: layer {i} has {found}, the manifest says {expected}")
    if linear != manifest["linear_params"]:
        raise GispError(
            f"{folder}: {linear} decoder linear weights loaded, the manifest says {manifest['linear_params']}"
        )
