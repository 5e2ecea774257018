"""Exporting a point of a trajectory as a model folder that loads anywhere, and loading it back.

An export is a folder with safetensors weights, ``config.json``, the tokenizer files and a
manifest (``gisp_manifest.json``). Two kinds:

* **per-layer** (default): exactly the trajectory's subnetwork; layers keep different widths.
  The folder carries its own configuration and modeling code (``configuration_gisp.py``,
  ``modeling_gisp.py``, rendered from ``gisp_engine/remote_code``), registered through
  ``auto_map``, so ``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)``
  loads it with nothing of this project installed. Where kept query heads do not form equal
  groups over their KV heads, the KV cache holds only the kept KV heads and each query head
  is given its own KV head after the cache update (compact cache).
* **uniform** (``uniform=True``): every layer cut to the same width, so the stock modeling
  code loads it with no remote code. This is *not* the trajectory's subnetwork; see
  ``uniform_keep_mask`` for the rule, and the manifest for its own sparsity.

The manifest records the kept original indices of every layer (query heads, KV heads,
channels), the parameter count, the parameter sparsity, the trajectory key and step, the
SHA-256 of the base model's weights, and the SHA-256 of every file written. ``load_pruned``
refuses a folder whose files differ from the manifest, that holds files the export did not
write, whose modeling code is not the project's own rendering, or whose loaded parameter
count differs from the manifest's.

Exporting slices the loaded model in place (one weight at a time, never two full copies):
afterwards ``loaded.model`` *is* the subnetwork. Load the model again for the dense one.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import re
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from . import remote_code
from .adapters import DecoderAdapter, adapter_for_config
from .errors import GispError
from .settings import ENGINE_VERSION
from .fsutil import TMP_MARK, atomic_write_bytes, atomic_write_json, sha256_file, staging_dir, umask
from .models import LoadedModel, resolve_device, resolve_dtype
from .progress import ProgressCallback, ProgressEvent, null_progress
from .structures import LayerKeep, StructureSpace
from .subnetwork import check_compatible, resolve_step
from .surgery import full_layout, kv_expand_index, linear_weight_count, slice_
from .trajectory import Trajectory

FORMAT = "gisp-export"
VERSION = 1
MANIFEST = "gisp_manifest.json"
PER_LAYER = "per-layer"
UNIFORM = "uniform"

UNIFORM_RULE = (
    "Every layer gets the same widths. Head count: the stock-loadable (KV heads x query heads per KV head) "
    "nearest the trajectory point's mean kept query heads per layer (then nearest its mean kept KV heads); "
    "under gqa=kv-group every kept KV head keeps all its query heads. Channel count: chosen so that the decoder "
    "linear weights match the point's as closely as possible. In each layer the structures kept are those that "
    "survived longest in the trajectory (removal step; never removed counts as last), ties broken by the last "
    "GISP score, and in layers never scored (protected layers) by weight L2 norm; a KV group ranks as its "
    "best-ranked query head. Protected layers are cut too, so this model differs from the trajectory's point."
)


# ---- results -------------------------------------------------------------------------------
@dataclass(frozen=True)
class UniformWidths:
    """Widths of every layer of a uniform export."""

    heads: int  # query heads
    kv_heads: int
    channels: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ExportResult:
    folder: Path
    manifest: dict

    @property
    def step(self) -> int:
        return int(self.manifest["trajectory"]["step"])

    @property
    def param_sparsity(self) -> float:
        return float(self.manifest["param_sparsity"])

    @property
    def param_count(self) -> int:
        return int(self.manifest["param_count"])

    def summary(self) -> dict:
        m = self.manifest
        return {
            "path": str(self.folder),
            "kind": m["kind"],
            "step": self.step,
            "param_sparsity": self.param_sparsity,
            "structural_ratio": m["structural_ratio"],
            "trajectory_param_sparsity": m["trajectory"]["param_sparsity"],
            "param_count": self.param_count,
            "linear_params": m["linear_params"],
            "uniform": m["uniform"],
            "loads_with": m["loads_with"],
        }


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
        return _param_count(self.model)

    @property
    def param_sparsity(self) -> float:
        return float(self.manifest["param_sparsity"])


# ---- which structures a uniform export keeps -----------------------------------------------
def _survival_rank(trajectory: Trajectory, fallback_scores: np.ndarray | None) -> np.ndarray:
    """Per structure, its rank within its layer and kind (0 = first to cut): later removal, then higher score."""
    space = trajectory.space
    survival = np.where(trajectory.removal_step == -1, trajectory.num_steps + 1, trajectory.removal_step)
    score = trajectory.score.astype(np.float64)
    if fallback_scores is not None:
        score = np.where(np.isnan(score), fallback_scores, score)
    score = np.nan_to_num(score, nan=-np.inf)
    rank = np.zeros(space.size, np.int64)
    for layer in range(space.geometry.num_layers):
        for block in (space.head_slice(layer), space.channel_slice(layer)):
            ids = np.arange(block.start, block.stop)
            # lexsort: last key is primary; a lower index wins a full tie (as in the GISP ranking)
            order = np.lexsort((-space.index[ids], score[ids], survival[ids]))
            rank[ids[order]] = np.arange(len(ids))
    return rank


def _top(values: np.ndarray, n: int) -> np.ndarray:
    return np.sort(np.argsort(-values, kind="stable")[:n])


def uniform_widths(
    trajectory: Trajectory, step: int, accepts: Callable[[int, int], bool] | None = None
) -> UniformWidths:
    """The per-layer widths of the uniform export of ``step`` (see ``UNIFORM_RULE``).

    ``accepts(heads, kv_heads)`` says whether the family's stock config allows that head
    count (Llama requires the hidden size to be a multiple of the head count).
    """
    space, g = trajectory.space, trajectory.geometry
    point = trajectory.keep_mask(step)
    q, kv = space.head_and_kv_keep(point)
    layers = g.num_layers
    mean_heads, mean_kv = q.sum() / layers, kv.sum() / layers
    group_sizes = [g.group_size] if space.gqa == "kv-group" else range(1, g.group_size + 1)
    candidates = [
        (n_kv * per_kv, n_kv)
        for n_kv in range(1, g.num_kv_heads + 1)
        for per_kv in group_sizes
        if accepts is None or accepts(n_kv * per_kv, n_kv)
    ]
    if not candidates:
        raise GispError("no uniform head count is accepted by this model family's config: use a per-layer export")
    heads, n_kv = min(candidates, key=lambda c: (abs(c[0] - mean_heads), abs(c[1] - mean_kv), -c[0]))
    target = float(space.linear_params_per_layer(point).sum()) / layers
    attention = 2 * g.head_dim * g.hidden_size * (heads + n_kv)
    channels = int(round((target - attention) / (3 * g.hidden_size)))
    return UniformWidths(heads, n_kv, min(max(channels, 1), g.intermediate_size))


def uniform_keep_mask(
    trajectory: Trajectory,
    step: int,
    accepts: Callable[[int, int], bool] | None = None,
    fallback_scores: np.ndarray | None = None,
) -> tuple[np.ndarray, UniformWidths]:
    """A keep-mask with the same widths in every layer, chosen from the trajectory's order (``UNIFORM_RULE``).

    ``fallback_scores`` ranks structures the trajectory never scored (NaN score, i.e. protected layers).
    """
    space, g = trajectory.space, trajectory.geometry
    widths = uniform_widths(trajectory, step, accepts)
    rank = _survival_rank(trajectory, fallback_scores)
    keep = np.zeros(space.size, bool)
    per_kv = widths.heads // widths.kv_heads
    for layer in range(g.num_layers):
        heads, channels = space.head_slice(layer), space.channel_slice(layer)
        head_rank = rank[heads]
        if space.gqa == "kv-group":
            keep[heads.start + _top(head_rank, widths.kv_heads)] = True
        else:
            groups = head_rank.reshape(g.num_kv_heads, g.group_size)
            for group in _top(groups.max(axis=1), widths.kv_heads):
                keep[heads.start + group * g.group_size + _top(groups[group], per_kv)] = True
        keep[channels.start + _top(rank[channels], widths.channels)] = True
    return keep, widths


def _weight_norms(loaded: LoadedModel, space: StructureSpace, layers: list[int]) -> np.ndarray:
    """L2 norm of each structure's weights in ``layers`` (NaN elsewhere): the ranking where GISP never scored."""
    g, adapter = space.geometry, loaded.adapter
    out = np.full(space.size, np.nan)
    with torch.no_grad():
        for i in layers:
            layer = adapter.layers(loaded.model)[i]
            lin, mlp = adapter.attention(layer), adapter.mlp(layer)
            sq = lambda w, dim: w.detach().float().pow(2).sum(dim)  # noqa: E731
            q = sq(lin.q.weight, 1).reshape(g.num_heads, g.head_dim).sum(1)
            o = sq(lin.o.weight, 0).reshape(g.num_heads, g.head_dim).sum(1)
            head = q + o
            if space.gqa == "kv-group":
                kv = (sq(lin.k.weight, 1) + sq(lin.v.weight, 1)).reshape(g.num_kv_heads, g.head_dim).sum(1)
                head = head.reshape(g.num_kv_heads, g.group_size).sum(1) + kv
            channel = sq(mlp.gate.weight, 1) + sq(mlp.up.weight, 1) + sq(mlp.down.weight, 0)
            out[space.head_slice(i)] = head.sqrt().cpu().numpy()
            out[space.channel_slice(i)] = channel.sqrt().cpu().numpy()
    return out


def _config_accepts(config) -> Callable[[int, int], bool]:
    base = config.to_dict()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def accepts(heads: int, kv_heads: int) -> bool:
        try:
            type(config).from_dict({**base, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
                                    "head_dim": head_dim})
        except Exception:  # the family's own validation refused these widths
            return False
        return True

    return accepts


# ---- export --------------------------------------------------------------------------------
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


def _param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() counts tied weights once


def _manifest_json(manifest: dict) -> str:
    """Indented JSON with every list of numbers on one line (the kept channels run into thousands)."""
    text = json.dumps(manifest, indent=1)
    return re.sub(r"\[\s*((?:-?\d+,\s*)*-?\d+)\s*\]", lambda m: "[" + re.sub(r",\s*", ", ", m.group(1)) + "]", text) + "\n"


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise GispError(f"--out {out} is a file: give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise GispError(f"refusing to replace {out}: it is not empty and not a GISP export; choose a new folder")


def _layer_spec(space: StructureSpace, keep: LayerKeep) -> dict:
    return {
        "num_heads": len(keep.heads),
        "num_kv_heads": len(keep.kv_heads),
        "intermediate_size": len(keep.channels),
        "kv_map": kv_expand_index(space, keep) if keep.heads else None,
    }


def _config_dict(loaded: LoadedModel, space: StructureSpace, layout: list[LayerKeep],
                 family: remote_code.BaseFamily, widths: UniformWidths | None) -> dict:
    config = loaded.model.config.to_dict()
    config.pop("_name_or_path", None)
    config.pop("auto_map", None)
    config["dtype"] = str(loaded.dtype).removeprefix("torch.")
    if widths is not None:  # stock config at the uniform widths; head_dim stays the base one
        config.update(num_attention_heads=widths.heads, num_key_value_heads=widths.kv_heads,
                      intermediate_size=widths.channels, head_dim=space.geometry.head_dim)
        return config
    config.update(
        model_type=family.pruned_model_type,
        architectures=[remote_code.MODEL_CLASS],
        auto_map=remote_code.auto_map(),
        head_dim=space.geometry.head_dim,
        gisp_base_model_type=family.model_type,
        gisp_template_version=remote_code.TEMPLATE_VERSION,
        gisp_layers=[_layer_spec(space, lk) for lk in layout],
    )
    return config


def export_subnetwork(
    loaded: LoadedModel,
    trajectory: Trajectory,
    step: int,
    out_dir: Path | str,
    uniform: bool = False,
    progress: ProgressCallback = null_progress,
) -> ExportResult:
    """Write the subnetwork at ``step`` (or its uniform version) into ``out_dir``; slices ``loaded`` in place."""
    out = Path(out_dir).expanduser()
    _check_out_dir(out)
    check_compatible(loaded, trajectory)
    step = resolve_step(trajectory, step=step)
    space = trajectory.space
    family = base_family(loaded)
    if linear_weight_count(loaded.model, loaded.adapter) != space.total_linear_params():
        raise GispError("export needs the dense model as loaded (it slices it in place): load the model again")
    stages = 5

    def report(done: int, message: str) -> None:
        progress(ProgressEvent("export", done, stages, message="export", info={"stage": message}))

    report(0, "choosing structures")
    widths = None
    if uniform:
        unscored = sorted({int(space.layer[i]) for i in np.flatnonzero(np.isnan(trajectory.score))})
        norms = _weight_norms(loaded, space, unscored) if unscored else None
        keep, widths = uniform_keep_mask(trajectory, step, _config_accepts(loaded.model.config), norms)
    else:
        keep = trajectory.keep_mask(step)

    report(1, "slicing")
    layout = slice_(loaded.model, loaded.adapter, space, full_layout(space), keep)
    linear = int(space.linear_params_per_layer(keep).sum())
    if linear_weight_count(loaded.model, loaded.adapter) != linear:  # the slicer and the accounting must agree
        raise GispError("internal error: the sliced model's size does not match its keep-mask")
    point = trajectory.steps[step]
    config = _config_dict(loaded, space, layout, family, widths)

    with staging_dir(out) as tmp:
        report(2, "writing weights")
        # shards of 2 GB: writing holds at most one shard's bytes beside the (already smaller) model
        loaded.model.save_pretrained(tmp, max_shard_size="2GB")
        report(3, "writing config, tokenizer and code")
        loaded.tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "config.json", config)
        code = {} if uniform else remote_code.render(family)
        for name, text in code.items():
            (tmp / name).write_text(text, encoding="utf-8")
        report(4, "hashing")
        files = {}
        for path in sorted(tmp.iterdir()):
            if path.is_file() and not path.name.startswith(TMP_MARK):
                os.chmod(path, 0o666 & ~umask())  # some writers create 0600 files; an export is for sharing
                files[path.name] = sha256_file(path)
        loads_with = (
            "AutoModelForCausalLM.from_pretrained(DIR) (stock code) or gisp_engine.load_pruned(DIR)" if uniform
            else "AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True) (and AutoTokenizer likewise) "
            "or gisp_engine.load_pruned(DIR)"
        )
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "kind": UNIFORM if uniform else PER_LAYER,
            "loads_with": loads_with,
            "base_model": loaded.describe(),
            "trajectory": {
                "key": trajectory.key,
                "path": str(trajectory.path) if trajectory.path else None,
                "gqa": trajectory.gqa,
                "objective": trajectory.meta.get("objective", {}).get("objective"),
                "step": step,
                "param_sparsity": point.param_sparsity,
                "structural_ratio": point.structural_ratio,
            },
            "param_sparsity": space.param_sparsity(keep),
            "structural_ratio": float(1.0 - keep.mean()),
            "linear_params": linear,
            "dense_linear_params": space.total_linear_params(),
            "param_count": _param_count(loaded.model),
            "dtype": str(loaded.dtype).removeprefix("torch."),
            "uniform": None if widths is None else {**widths.to_dict(), "rule": UNIFORM_RULE},
            "remote_code": None if uniform else {
                "template_version": remote_code.TEMPLATE_VERSION,
                "base": family.to_dict(),
                "files": sorted(code),
                "kv_cache": "compact: only kept KV heads are cached; uneven groups are expanded after the cache update",
            },
            "layers": [lk.to_dict() for lk in layout],
            "files": files,
            "engine_version": ENGINE_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_bytes(tmp / MANIFEST, _manifest_json(manifest).encode("utf-8"))
    report(5, "done")
    return ExportResult(out, manifest)


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
    if not isinstance(files, dict) or "config.json" not in files:
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
    extra = sorted(p.name for p in folder.iterdir()
                   if p.is_file() and p.name != MANIFEST and p.name not in files and not p.name.startswith("."))
    if extra:
        raise GispError(f"export {folder} holds files the export did not write: {', '.join(extra)}; remove them")
    if manifest.get("kind") == PER_LAYER:
        try:
            family = remote_code.BaseFamily(**manifest["remote_code"]["base"])
        except (KeyError, TypeError):
            raise GispError(f"corrupt export manifest {path}: no remote-code record") from None
        for name, text in remote_code.render(family).items():
            if name not in files or (folder / name).read_bytes() != text.encode("utf-8"):
                raise GispError(
                    f"{folder / name} is not the modeling code this GISP Explorer writes "
                    f"(template version {remote_code.TEMPLATE_VERSION}): export the subnetwork again"
                )
    elif manifest.get("kind") != UNIFORM:
        raise GispError(f"corrupt export manifest {path}: unknown kind {manifest.get('kind')!r}")
    return manifest


def _adapter_for(manifest: dict, config) -> DecoderAdapter:
    base_type = manifest["base_model"]["model_type"]
    # the remote-code config names its own model_type; the modules are the base family's
    return adapter_for_config(types.SimpleNamespace(model_type=base_type, hidden_act=config.hidden_act))


def _check_widths(model: torch.nn.Module, adapter: DecoderAdapter, manifest: dict, folder: Path) -> None:
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
        raise GispError(f"{folder}: {linear} decoder linear weights loaded, the manifest says {manifest['linear_params']}")


def load_pruned(
    folder: Path | str,
    device: str = "auto",
    dtype: str = "auto",
    base_weights_sha256: str | None = None,
) -> PrunedModel:
    """Verify and load an export (either kind); ``base_weights_sha256`` also requires a given base model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder).expanduser().resolve()
    manifest = verify_export(folder)
    base_sha = manifest["base_model"].get("weights_sha256")
    if base_weights_sha256 is not None and base_sha != base_weights_sha256:
        raise GispError(
            f"{folder} was pruned from base weights {str(base_sha)[:12]}, not from {base_weights_sha256[:12]}"
        )
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    # the remote code was checked above to be this project's own rendering, byte for byte
    remote = manifest["kind"] == PER_LAYER
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, trust_remote_code=remote)
    model.to(dev).eval()
    count = _param_count(model)
    if count != manifest["param_count"]:
        raise GispError(f"{folder}: the loaded model has {count} parameters, the manifest says {manifest['param_count']}")
    adapter = _adapter_for(manifest, model.config)
    _check_widths(model, adapter, manifest, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, config=model.config)  # no second (remote) config load
    return PrunedModel(model, tokenizer, adapter, manifest, folder, dev, torch_dtype)


# ---- command line ---------------------------------------------------------------------------
def cmd_export(args) -> None:
    from .cli import TqdmProgress, _emit, _load_trajectory
    from .models import load_model

    if args.sparsity is None and args.step is None:
        raise GispError("give --sparsity S (parameter sparsity) or --step K")
    trajectory = _load_trajectory(args.trajectory)
    step = resolve_step(trajectory, args.sparsity, args.step)
    _check_out_dir(Path(args.out).expanduser())  # before minutes of loading
    loaded = load_model(args.model, args.device, args.dtype)
    bar = TqdmProgress(enabled=not args.quiet)
    try:
        result = export_subnetwork(loaded, trajectory, step, args.out, uniform=args.uniform, progress=bar)
    finally:
        bar.close()
    s = result.summary()
    text = (
        f"{result.folder}\n{s['kind']} export of step {s['step']}: parameter sparsity {s['param_sparsity']:.4f} "
        f"(trajectory point {s['trajectory_param_sparsity']:.4f}), {s['param_count']:,} parameters\n"
        f"loads with {s['loads_with']}"
    )
    _emit(args, s, text)


def register_cli(subparsers) -> None:
    from . import settings

    p = subparsers.add_parser("export", help="write a point of a trajectory as a smaller model folder")
    p.add_argument("--model", default=settings.DEFAULT_MODEL, help="the base model the trajectory was built for")
    p.add_argument("--trajectory", required=True, help="a trajectory folder or cache key")
    p.add_argument("--sparsity", type=float, default=None, help="parameter sparsity (the last step at or below it)")
    p.add_argument("--step", type=int, default=None, help="a step of the trajectory instead of a sparsity")
    p.add_argument("--out", required=True, help="folder to write (replaced if it holds an earlier export)")
    p.add_argument("--uniform", action="store_true",
                   help="same width in every layer: loads with stock transformers code, differs from the trajectory")
    p.add_argument("--device", default="cpu", help="where to slice: cpu (default), cuda[:N], auto")
    p.add_argument("--dtype", default="auto", help="dtype of the written weights: auto (float32 on CPU), bfloat16, ...")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_export)
