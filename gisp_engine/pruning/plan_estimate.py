"""What a pruning run will need, known before any weight is loaded: the dry run and its memory estimate.

The model is built on the meta device from its config (shapes, no storage), so the estimate counts
what the engine itself allocates rather than fitting a curve:

  weights         every parameter once (tied embeddings once) in the run's dtype. On CPU a checkpoint
                  in another dtype is converted while its file is mapped, so loading peaks at the
                  file plus the converted weights (``load_peak``).
  gradient sums   ``importance.score_structures`` keeps the scored weights' gradients across
                  micro-batches: in ``.grad`` (float32 model) or in float32 sums (bf16/fp16), 4 bytes
                  per scored weight; with one micro-batch per process each gradient is freed in its hook.
  activations     what autograd saves in one micro-batch's forward, layer by layer, with only the
                  scored weights asking for gradients (layers below the first scored one save
                  nothing): each RMSNorm whose input needs a gradient keeps that input in float32 and
                  its 1/rms; each scored q_proj, gate/up and down_proj keeps its input; attention
                  (SDPA) keeps q, k, v (expanded to one per query head where a mask is passed), its
                  output and a float32 log-sum-exp; the gated MLP keeps its gate and up outputs and
                  the activation's output; q/k norms (Gemma 3, Qwen3) keep their float32 inputs.
  head            ``nll.token_nll``'s chunked LM head, at the start of the backward pass (every
                  activation still alive): one chunk's float32 log-softmax, its gradient and the
                  logits' gradient, 3 x rows x vocabulary x 4 bytes.
  runtime         CPU: this process's resident set now (interpreter, torch, transformers, the
                  tokenizer and the calibration data, which a run holds too); GPU: nothing (the
                  CUDA allocator's peak, what ``cost.PeakMemory`` reports, leaves out the context).

The peak is the larger of loading and ``runtime + weights + gradient sums + activations + head`` in
the first step; on CPU, where a checkpoint already in the run's dtype stays mapped (the embeddings
keep the mapping), the second step adds the sliced copies of the pruned layers beside it, and its
peak counts when it is the larger. Which kernel the attention takes, the allocator's caching and a CPU heap
that keeps freed small blocks are not modelled; ``benchmarks/bench_estimate.py`` measures how far that leaves it.

Times come from measurements: every real run records its first (dense) step's tokens/s under
``cache/throughput/``; a dry run for the same model, device and dtype divides by it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..core import settings
from ..core.errors import GispError
from ..core.fsutil import atomic_write_json
from ..model.loading import DTYPES, WEIGHT_SUFFIXES, load_config, recorded_dtype, resolve_device, resolve_dtype
from ..model.nll import LOGIT_CHUNK_ELEMENTS
from ..model.structures import StructureSpace
from ..model.surgery import full_layout
from . import distributed, methods
from .config import PruneConfig
from .importance import scored_targets
from .objectives import objective_spec

GIB = 1 << 30
#: Fraction of the free memory a run may plan to use: the rest covers what the estimate does not model.
HEADROOM = 0.9


# ---- devices and settings the estimate covers ------------------------------------------------
def devices_here() -> list[str]:
    """Every device this machine offers the engine."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    return found


def check_device(device: str) -> torch.device:
    """The device ``--device`` names, refused in one line (naming this machine's devices) when absent."""
    here = ", ".join(devices_here())
    try:
        dev = resolve_device(device)
    except GispError:
        raise GispError(f"--device {device}: no such device on this machine; it has {here}") from None
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise GispError(f"--device {device}: no such device on this machine; it has {here}")
    return dev


def check_request(config: PruneConfig) -> tuple[torch.device, torch.dtype]:
    """Settings refused before anything is read or written: the device, the dtype, the device map."""
    config.validate()
    dev = check_device(config.device)
    if config.dtype != "auto" and config.dtype not in DTYPES:
        raise GispError(f"--dtype {config.dtype}: the estimate knows auto, {', '.join(DTYPES)}")
    dtype = resolve_dtype(config.dtype, dev)
    if config.device_map not in (None, "auto"):
        raise GispError(f"--device-map {config.device_map}: only 'auto' is supported")
    return dev, dtype


# ---- the model without weights ---------------------------------------------------------------
@dataclass
class _NoWeights:
    """What an objective's ``build`` reads from a loaded model, without the model: it cuts the same batches."""

    tokenizer: object
    adapter: object
    device: torch.device
    max_length: int


@dataclass(frozen=True)
class LayerShape:
    """What one decoder layer saves for the backward pass depends on these (read off the meta model)."""

    norms: int  # RMSNorms on the residual path (Llama 2, Gemma 3 4)
    qk_norms: bool  # per-head q/k norms (Gemma 3, Qwen3)


def meta_model(hf_config, dtype: torch.dtype) -> torch.nn.Module:
    """The model with every parameter on the meta device: its shapes, no storage."""
    import copy

    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # on a copy: from_config writes the dtype into the config it is given
        return AutoModelForCausalLM.from_config(copy.deepcopy(hf_config), dtype=dtype)


def layer_shape(adapter, model: torch.nn.Module) -> LayerShape:
    layer = adapter.layers(model)[0]
    norms = sum(1 for m in layer.children() if type(m).__name__.endswith("Norm"))
    attn = adapter.attention_module(layer)
    return LayerShape(norms=norms, qk_norms=hasattr(attn, "q_norm") and hasattr(attn, "k_norm"))


# ---- the estimate -----------------------------------------------------------------------------
@dataclass
class Part:
    name: str
    bytes: int
    note: str

    def to_dict(self) -> dict:
        return {"name": self.name, "bytes": self.bytes, "gib": round(self.bytes / GIB, 3), "note": self.note}


@dataclass
class MemoryEstimate:
    device: str
    dtype: str
    parts: list[Part]  # the scoring step's peak, part by part
    load_peak: int  # while the weights load (CPU: a mapped file beside converted weights)
    spread_over: int = 1  # --device-map auto: GPUs the model is spread over

    @property
    def step_peak(self) -> int:
        return sum(p.bytes for p in self.parts)

    @property
    def peak(self) -> int:
        return max(self.step_peak, self.load_peak)

    def part(self, name: str) -> int:
        return sum(p.bytes for p in self.parts if p.name == name)

    def to_dict(self) -> dict:
        return {
            "device": self.device,
            "dtype": self.dtype,
            "peak_bytes": self.peak,
            "peak_gib": round(self.peak / GIB, 3),
            "step_peak_bytes": self.step_peak,
            "load_peak_bytes": self.load_peak,
            "spread_over": self.spread_over,
            "parts": [p.to_dict() for p in self.parts],
        }


@dataclass(frozen=True)
class Workload:
    """One process's share of a step: its micro-batches and the largest one's shape."""

    micro_batches: int  # of this process
    batch: int  # sequences of the largest micro-batch
    length: int  # its (padded) length
    masked: bool  # an attention mask is passed (padded batches), so K/V are expanded per query head


def estimate_memory(
    model: torch.nn.Module,
    adapter,
    space: StructureSpace,
    scored_layers: list[int],
    dtype: torch.dtype,
    device: torch.device,
    work: Workload,
    gradients: bool,
    runtime: int = 0,
    checkpoint_bytes: int = 0,
    checkpoint_dtype: str | None = None,
    kept_after_first: float | None = None,
    rescores: bool = True,
) -> MemoryEstimate:
    """Peak memory of a run's largest step on ``device``, part by part (see the module's doc).

    That is the first (dense) step, unless the weights stay file-mapped (CPU, a safetensors checkpoint
    already in the run's dtype) and the model is sliced after it (``kept_after_first``: the fraction of
    structures step 1 keeps, None when nothing is sliced before a second step): the embeddings keep the
    mapping, so every weight page stays resident beside the sliced copies of the pruned layers. A method
    that does not re-score (``rescores``) runs its later steps forward only.
    """
    dtype_name = str(dtype).removeprefix("torch.")
    p = torch.empty((), dtype=dtype).element_size()
    params = sum(t.numel() for t in model.parameters())
    weights = params * p + sum(b.numel() * b.element_size() for b in model.buffers())
    mapped = device.type == "cpu" and checkpoint_dtype == dtype_name and checkpoint_bytes > 0
    runtime_note = (
        "this process now: interpreter, torch, tokenizer, calibration data"
        if device.type == "cpu"
        else "not in the CUDA allocator's peak (context, other processes)"
    )
    first = [
        Part("runtime", runtime, runtime_note),
        Part(
            "weights",
            weights,
            f"{params:,} parameters in {dtype_name} (tied ones once)"
            + (", read from the mapped checkpoint" if mapped else ""),
        ),
        Part("sliced copies", 0, "nothing sliced yet (step 1, the dense model)"),
        *_step_parts(model, adapter, space, scored_layers, p, work, gradients, 1.0),
    ]
    best = first
    if mapped and kept_after_first is not None:
        linear = _linear_weights(model, adapter, scored_layers) * p
        second = [
            Part("runtime", runtime, runtime_note),
            Part("weights", weights, f"{params:,} parameters in {dtype_name}, the checkpoint's pages still mapped"),
            Part(
                "sliced copies",
                int(linear * kept_after_first),
                f"step 2: the scored layers sliced to {kept_after_first:.0%} of their structures, beside the mapping",
            ),
            *_step_parts(model, adapter, space, scored_layers, p, work, gradients and rescores, kept_after_first),
        ]
        if sum(x.bytes for x in second) > sum(x.bytes for x in first):
            best = second
    converts = device.type == "cpu" and checkpoint_dtype not in (None, dtype_name)
    load_peak = runtime + weights + (checkpoint_bytes if converts else 0)
    return MemoryEstimate(str(device), dtype_name, best, load_peak)


def _linear_weights(model, adapter, layers: list[int]) -> int:
    """Elements of every attention and MLP projection of ``layers`` (what slicing rebuilds)."""
    total = 0
    for i in layers:
        layer = adapter.layers(model)[i]
        a, m = adapter.attention(layer), adapter.mlp(layer)
        total += sum(lin.weight.numel() for lin in (a.q, a.k, a.v, a.o, m.gate, m.up, m.down))
    return total


def _step_parts(
    model,
    adapter,
    space: StructureSpace,
    scored_layers: list[int],
    p: int,
    work: Workload,
    gradients: bool,
    kept: float,
) -> list[Part]:
    """Gradient sums, activations and head of one step, the scored layers at ``kept`` of their width."""
    g, cfg = space.geometry, model.config
    scored = scored_targets(model, adapter, space, full_layout(space), scored_layers) if gradients else []
    scored_count = int(kept * sum(t.param.numel() for t in {id(t.param): t for t in scored}.values()))
    sums = 4 * scored_count if gradients and work.micro_batches > 1 else 0
    n = work.batch * work.length  # tokens of the largest micro-batch
    vocab = int(cfg.vocab_size)
    rows = min(max(64, LOGIT_CHUNK_ELEMENTS // vocab), work.batch * (work.length - 1))
    if gradients and scored_layers:
        activations = n * _saved_per_token(g, cfg, layer_shape(adapter, model), scored_layers, space, p, work, kept)
        activations += work.batch * work.length * work.length * (2 if work.masked else 0)  # boolean masks
        head = 3 * rows * vocab * 4
        head_note = (
            f"chunk of {rows} positions x {vocab:,} logits: float32 log-softmax, its gradient, the logits' gradient"
        )
        act_note = (
            f"saved for backward, {work.batch} x {work.length} tokens, layers {scored_layers[0]}-{g.num_layers - 1}"
            + (", K/V expanded (masked)" if work.masked else "")
        )
    else:  # forward only (fixed-ranking methods that read activations or nothing): one layer's working set
        activations = n * (4 * g.hidden_size + 3 * g.intermediate_size + 2 * g.num_heads * g.head_dim) * p
        head = 2 * rows * vocab * 4
        head_note = f"chunk of {rows} positions x {vocab:,} logits (forward only)"
        act_note = f"one layer's forward working set, {work.batch} x {work.length} tokens (nothing saved)"
    sums_note = (
        f"{scored_count:,} scored weights x 4 bytes (float32), kept across {work.micro_batches} micro-batches"
        if sums
        else "one micro-batch per process: each gradient freed in its hook"
        if gradients
        else "no gradients"
    )
    return [
        Part("gradient sums", sums, sums_note),
        Part("activations", activations, act_note),
        Part("head", head, head_note),
    ]


def _saved_per_token(
    g,
    cfg,
    shape: LayerShape,
    scored_layers: list[int],
    space: StructureSpace,
    p: int,
    work: Workload,
    kept: float = 1.0,
) -> int:
    """Bytes autograd keeps per token of one micro-batch, over the layers a backward pass goes through
    (the scored layers' heads and channels at ``kept`` of their number)."""
    first, scored = min(scored_layers), set(scored_layers)
    hidden = g.hidden_size
    windows = _sliding_layers(cfg, work.length)
    total = 0.0
    for i in range(first, g.num_layers):
        share = kept if i in scored else 1.0
        inter, heads = share * g.intermediate_size, share * g.num_heads
        q_width, kv_width = heads * g.head_dim, g.num_kv_heads * g.head_dim
        needs_input = i > first  # below the first scored layer nothing needs a gradient
        norm = 4 * hidden + 4  # float32 input and 1/rms
        layer = (shape.norms - (0 if needs_input else 1)) * norm
        expanded = g.is_gqa and (work.masked or i in windows)
        kv = q_width if expanded else kv_width
        layer += (2 * q_width + 2 * kv) * p + 4 * heads  # q, out, k, v; float32 log-sum-exp
        layer += 3 * inter * p  # gate out, activation out, up out
        if shape.qk_norms:
            layer += 4 * q_width + 4 * heads
            k_scored = space.gqa == "kv-group" or not g.is_gqa
            if needs_input or (i in scored and k_scored):
                layer += 4 * kv_width + 4 * g.num_kv_heads
        if i in scored:
            layer += (2 * hidden + inter) * p  # inputs of q_proj, gate/up_proj and down_proj for their weight gradients
        total += layer
    return int(total) + 4 * hidden + 4 + hidden * p  # final norm; the last hidden states the head's chunks start from


def _sliding_layers(cfg, length: int) -> set[int]:
    """Layers whose attention gets a mask: a sliding window shorter than the sequence."""
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None) or []
    if not window or length <= window:
        return set()
    return {i for i, t in enumerate(types) if t == "sliding_attention"}


# ---- free memory -------------------------------------------------------------------------------
def free_bytes(device: torch.device, spread: bool = False) -> int:
    """What the device can still give: MemAvailable on CPU, the CUDA driver's free memory on a GPU (all GPUs when
    spread)."""
    if device.type == "cuda":
        indices = range(torch.cuda.device_count()) if spread else [device.index or 0]
        return sum(torch.cuda.mem_get_info(i)[0] for i in indices)
    try:
        with open("/proc/meminfo") as fh:
            info = dict(line.split(":", 1) for line in fh)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _rss() -> int:
    """This process's resident set (``cost.rss_bytes``, which sits a layer above)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---- measured speed ------------------------------------------------------------------------------
def _throughput_file(model_sha: str) -> Path:
    return settings.cache_dir() / "throughput" / f"{model_sha[:24]}.json"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device.index or 0)})"
    return f"cpu ({os.cpu_count()} cores)"


def record_throughput(trajectory, tokens_per_step: int, gradients: bool) -> None:
    """Remember a finished run's first-step speed (tokens/s), for later dry runs of the same model and device."""
    meta, steps = trajectory.meta, trajectory.steps
    if not steps or steps[0].wall_s <= 0:
        return
    device = torch.device(meta.get("device", "cpu"))
    entry = {
        "device": device_name(device),
        "dtype": meta["model"]["dtype"],
        "method": meta.get("method"),
        "gradients": gradients,
        "processes": meta.get("processes", 1),
        "threads": torch.get_num_threads(),
        "tokens_per_step": tokens_per_step,
        "first_step_s": steps[0].wall_s,
        "mean_step_s": round(steps[-1].wall_s / max(1, len(steps) - 1), 3),
        "tokens_per_s": round(tokens_per_step / steps[0].wall_s, 2),
        "key": meta.get("key"),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    path = _throughput_file(meta["model"]["weights_sha256"])
    try:
        old = json.loads(path.read_text()) if path.is_file() else []
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, ([e for e in old if isinstance(e, dict)] + [entry])[-20:])
    except (OSError, ValueError):
        pass  # a speed record is a convenience: a read-only cache still prunes


def measured_throughput(model_sha: str, device: torch.device, dtype: str, gradients: bool) -> dict | None:
    """The latest recorded speed for this model, device and dtype (by a method of the same kind), else None."""
    path = _throughput_file(model_sha)
    try:
        entries = json.loads(path.read_text()) if path.is_file() else []
    except (OSError, ValueError):
        return None
    name = device_name(device)
    for entry in reversed(entries if isinstance(entries, list) else []):
        if (
            isinstance(entry, dict)
            and entry.get("device") == name
            and entry.get("dtype") == dtype
            and entry.get("gradients", True) == gradients
            and entry.get("tokens_per_s")
        ):
            return entry
    return None


# ---- the dry run -----------------------------------------------------------------------------------
@dataclass
class DryRun:
    settings: dict
    key: str
    cached: bool
    model: dict
    structures: int
    scored_structures: int
    scored_layers: list[int]
    processes: int
    micro_batches: int  # of the whole step
    sequences: int
    tokens_per_step: int
    largest_micro_batch: dict
    memory: MemoryEstimate
    free_bytes: int
    fits: bool
    suggestion: str | None
    time: dict | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["memory"] = self.memory.to_dict()
        return out

    def text(self) -> str:
        s, m = self.settings, self.memory
        lines = [
            f"model       {self.model['id']} ({self.model['family']}, {self.model['params']:,} parameters, "
            f"{self.model['folder']})",
            f"settings    method {s['method']}, objective {s['objective']}, {s['steps']} steps to structural ratio "
            f"{s['max_sparsity']} ({s['schedule']}), gqa {s['gqa']}, device {m.device}, dtype {m.dtype}, "
            f"batch size {s['batch_size']}" + (f", align {s['align']}" if s.get("align") else ""),
            f"cache key   {self.key}: "
            + ("in the cache (a run answers at once)" if self.cached else "not in the cache"),
            f"structures  {self.scored_structures:,} scored of {self.structures:,} "
            f"(layers {_ranges(self.scored_layers)})",
            f"per step    {self.tokens_per_step:,} tokens in {self.sequences:,} sequences, {self.micro_batches} "
            f"micro-batches"
            + (f" over {self.processes} processes" if self.processes > 1 else "")
            + f"; the largest {self.largest_micro_batch['sequences']} x {self.largest_micro_batch['length']} tokens",
            f"peak memory {m.peak / GIB:.2f} GiB on {m.device} ({m.dtype})"
            + (f", spread over {m.spread_over} GPUs" if m.spread_over > 1 else "")
            + f"; free {self.free_bytes / GIB:.2f} GiB: "
            + ("fits" if self.fits else "does NOT fit"),
        ]
        for part in m.parts:
            lines.append(f"  {part.name:<14}{part.bytes / GIB:8.3f} GiB  {part.note}")
        lines.append(
            f"  {'loading':<14}{m.load_peak / GIB:8.3f} GiB  peak while the weights load"
            + (
                " (the checkpoint's file mapped beside the converted weights)"
                if m.load_peak > m.part("runtime") + m.part("weights")
                else ""
            )
        )
        if self.time:
            t = self.time
            lines.append(
                f"time        first step ~{t['first_step_s']:.0f} s at {t['tokens_per_s']:,.3g} tokens/s "
                f"(measured {t['measured']} on {t['device']}); at most ~{t['run_s'] / 60:.0f} min for "
                f"{s['steps']} steps (later steps are smaller)"
            )
        else:
            lines.append("time        no measured speed for this model on this device yet (every real run records one)")
        if self.suggestion:
            lines.append(f"would fit   {self.suggestion}")
        lines += [f"note        {n}" for n in self.notes]
        return "\n".join(lines)


def _ranges(layers: list[int]) -> str:
    if not layers:
        return "none"
    out, start = [], layers[0]
    for a, b in zip(layers, layers[1:] + [None]):
        if b != a + 1:
            out.append(f"{start}-{a}" if a != start else f"{a}")
            start = b
    return ", ".join(out)


def workload_of(batches, processes: int) -> Workload:
    """One process's share (every ``processes``-th micro-batch) and the largest micro-batch."""
    if not batches:
        raise GispError("the objective produced no calibration batches")
    ids = [b["input_ids"] for b in batches]
    largest = max(ids, key=lambda t: t.numel())
    masked = any("attention_mask" in b and not bool(b["attention_mask"].all()) for b in batches)
    return Workload(math.ceil(len(ids) / processes), int(largest.shape[0]), int(largest.shape[1]), masked)


class _Estimator:
    """A model's meta copy, tokenizer and settings, estimated at any micro-batch size."""

    def __init__(self, the_plan, processes: int):
        from transformers import AutoTokenizer

        self.plan, self.config = the_plan, the_plan.config
        self.device, self.dtype = check_request(self.config)
        self.processes = processes
        self.folder, self.hf_config, self.adapter = load_config(self.config.model)
        self.method = methods.get(self.config.method)
        self.model = meta_model(self.hf_config, self.dtype)
        max_length = int(getattr(self.hf_config, "max_position_embeddings", 0) or 0)
        self.stub = _NoWeights(AutoTokenizer.from_pretrained(self.folder), self.adapter, self.device, max_length)
        space = the_plan.space
        self.scored_layers = [i for i in range(space.geometry.num_layers) if i not in the_plan.protected_layers]
        files = [f for f in self.folder.iterdir() if f.suffix in WEIGHT_SUFFIXES and f.is_file()]
        self.checkpoint_bytes = sum(f.stat().st_size for f in files)
        # safetensors files map; a .bin checkpoint is read into fresh tensors
        self.checkpoint_dtype = (
            recorded_dtype(self.hf_config) if any(f.suffix == ".safetensors" for f in files) else None
        )
        targets = the_plan.targets
        sliced = self.config.shrink and self.config.steps >= 2
        prunable = int((~space.protected_mask(the_plan.protect_first, self.config.protect_last)).sum())
        self.kept_after_first = 1.0 - targets[0] / max(1, prunable) if sliced else None
        self.spread = bool(self.config.device_map) and self.device.type == "cuda"
        self.free = free_bytes(self.device, self.spread)

    def batches(self, batch_size: int | None = None) -> list[dict]:
        from dataclasses import replace

        config = self.config if batch_size is None else replace(self.config, batch_size=batch_size)
        return objective_spec(config.objective).build(self.stub, config).batches()

    def memory(self, batches: list[dict]) -> MemoryEstimate:
        runtime = _rss() if self.device.type == "cpu" else 0
        memory = estimate_memory(
            self.model,
            self.adapter,
            self.plan.space,
            self.scored_layers,
            self.dtype,
            self.device,
            workload_of(batches, self.processes),
            self.method.uses_gradients,
            runtime,
            self.checkpoint_bytes,
            self.checkpoint_dtype,
            self.kept_after_first,
            self.method.rescores,
        )
        if self.spread:
            memory.spread_over = torch.cuda.device_count()
        return memory

    def fits(self, memory: MemoryEstimate) -> bool:
        return memory.peak - memory.part("runtime") <= HEADROOM * self.free


def dry_run(the_plan, processes: int | None = None) -> DryRun:
    """The plan of ``the_plan`` (``pruner.plan``'s result) as it would run here, with no weights loaded."""
    from . import cache

    est = _Estimator(the_plan, processes or distributed.context().world_size)
    config, device, space = est.config, est.device, the_plan.space
    batches = est.batches()
    memory = est.memory(batches)
    work = workload_of(batches, est.processes)
    tokens = sum(int(b["input_ids"].numel()) for b in batches)
    protected = space.protected_mask(the_plan.protect_first, config.protect_last)
    dtype_name = str(est.dtype).removeprefix("torch.")
    measured = measured_throughput(the_plan.request["model_sha256"], device, dtype_name, est.method.uses_gradients)
    time = None
    if measured:
        first = tokens / measured["tokens_per_s"]
        time = {
            "tokens_per_s": measured["tokens_per_s"],
            "first_step_s": round(first, 3),
            "run_s": round(first * config.steps, 3),
            "measured": measured["created"][:10],
            "device": measured["device"],
            "processes": measured.get("processes", 1),
        }
    resolved = config.to_dict()
    resolved.update(
        device=str(device),
        dtype=dtype_name,
        batch_size=config.resolved_batch_size(device),
        protect_first=the_plan.protect_first,
        protected_layers=the_plan.protected_layers,
    )
    notes = []
    if work.masked:
        notes.append("padded batches pass an attention mask: K/V are counted once per query head")
    if device.type == "cuda":
        notes.append(
            "GPU figures are the CUDA allocator's peak; the CUDA context (~0.5 GiB) and the allocator's "
            "cache come on top"
        )
    fits = est.fits(memory)
    return DryRun(
        settings=resolved,
        key=the_plan.key,
        cached=cache.lookup(the_plan.key) is not None,
        model={
            "id": config.model,
            "folder": str(est.folder),
            "family": est.adapter.family,
            "model_type": est.hf_config.model_type,
            "params": sum(t.numel() for t in est.model.parameters()),
            "geometry": space.geometry.to_dict(),
            "vocab_size": int(est.hf_config.vocab_size),
            "tied_embeddings": bool(getattr(est.hf_config, "tie_word_embeddings", False)),
        },
        structures=space.size,
        scored_structures=int((~protected).sum()),
        scored_layers=est.scored_layers,
        processes=est.processes,
        micro_batches=len(batches),
        sequences=sum(int(b["input_ids"].shape[0]) for b in batches),
        tokens_per_step=tokens,
        largest_micro_batch={"sequences": work.batch, "length": work.length},
        memory=memory,
        free_bytes=est.free,
        fits=fits,
        suggestion=None if fits else suggest(est, memory, len(batches)),
        time=time,
        notes=notes,
    )


def suggest(est: _Estimator, memory: MemoryEstimate, micro_batches: int) -> str:
    """What would fit here, in one line: a smaller micro-batch, the model spread over GPUs, or several processes."""
    free, device = est.free, est.device
    need = memory.peak - memory.part("runtime")
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    batch = est.config.resolved_batch_size(device)
    trial = batch
    while trial > 1:  # halve the micro-batch until it fits (activations and the head shrink with it)
        trial = max(1, trial // 2)
        smaller = est.memory(est.batches(trial))
        if est.fits(smaller):
            return (
                f"--batch-size {trial} (about {smaller.peak / GIB:.1f} GiB; --batch-size {batch} needs "
                f"{memory.peak / GIB:.1f} GiB)"
            )
    if gpus > 1 and not est.spread and need <= HEADROOM * free_bytes(device, spread=True):
        return f"--device-map auto (over this machine's {gpus} GPUs)"
    per_rank = need - memory.part("gradient sums")
    if micro_batches > 1 and memory.part("gradient sums") and per_rank <= HEADROOM * free:
        n = micro_batches
        return (
            f"torchrun --nproc_per_node {n} on {n} such devices (one micro-batch per process keeps no gradient "
            f"sums: about {per_rank / GIB:.1f} GiB each)"
        )
    return (
        f"nothing at these settings: {need / GIB:.1f} GiB needed, {free / GIB:.1f} GiB free on {device}; "
        "a GPU with bfloat16, or --device-map auto over several GPUs"
    )


# ---- the check of a real run -------------------------------------------------------------------------
def quick_upper_bound(config: PruneConfig, hf_config, geometry, device: torch.device, dtype: torch.dtype) -> int:
    """A generous bound from the config alone (no meta model, no tokenizer): a run under it needs no estimate."""
    p = torch.empty((), dtype=dtype).element_size()
    g, vocab = geometry, int(hf_config.vocab_size)
    per_layer = (
        g.hidden_size * (g.num_heads + 2 * g.num_kv_heads) * g.head_dim
        + g.num_heads * g.head_dim * g.hidden_size
        + 3 * g.hidden_size * g.intermediate_size
    )
    params = g.num_layers * per_layer + vocab * g.hidden_size * 2
    tokens = max(config.resolved_batch_size(device) * config.seq_len, 4096)
    activation = (
        tokens * g.num_layers * (12 * g.hidden_size + 6 * g.num_heads * g.head_dim + 6 * g.intermediate_size) * 4
    )
    return params * (2 * p + 4) + activation + 4 * LOGIT_CHUNK_ELEMENTS * 4 + tokens * tokens * 2


def refuse_if_too_big(the_plan) -> None:
    """Before a real run loads its weights: refuse, in one line naming what would fit, a run whose estimate
    exceeds the device's free memory (every process checks its own device; all refuse when one would)."""
    config = the_plan.config
    device, dtype = check_request(config)
    _folder, hf_config, _adapter = load_config(config.model)
    free = free_bytes(device, bool(config.device_map) and device.type == "cuda")
    if quick_upper_bound(config, hf_config, the_plan.space.geometry, device, dtype) <= HEADROOM * free:
        verdict = None
    else:
        result = dry_run(the_plan)  # every process holds a whole model: its own device must hold it
        fix = result.suggestion or ""
        verdict = (
            None
            if result.fits
            else (
                f"{config.model} needs about {result.memory.peak / GIB:.1f} GiB on {result.memory.device} "
                f"({result.memory.dtype}) and {result.free_bytes / GIB:.1f} GiB are free: "
                + (fix if fix.startswith("nothing") else f"would fit with {fix}")
                + "; --dry-run shows the estimate, --force runs anyway"
            )
        )
    ctx = distributed.context()
    if ctx.active:
        refused = torch.tensor([0.0 if verdict is None else 1.0], dtype=torch.float64)
        distributed.all_reduce_sum_(refused)
        if verdict is None and float(refused) > 0:
            verdict = "another process's device has too little free memory for this run (see rank 0's message)"
    if verdict:
        raise GispError(verdict)
