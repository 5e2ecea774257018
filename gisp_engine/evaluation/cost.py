"""What a subnetwork costs to run: prefill and decode speed, peak memory, weight bytes, parameters.

One :class:`CostSpec` says the workload; :func:`measure_cost` runs it on a loaded model:

  prefill  tokens/s: one forward of ``batch x seq_len`` random tokens that fills the KV cache and
           returns the next token's logits (``logits_to_keep=1``, what ``generate`` does with a prompt)
  decode   tokens/s at batch 1: greedy, one token per forward with the KV cache, after a short prompt
  memory   peak over one prefill and one decode: weights plus the working memory above the resident
           set before the workload (CPU: sampled resident set; GPU: the CUDA allocator's peak)
  weights  bytes of the parameters in the dtype the model would be exported in, and their count

Absolute times mean little on a shared machine, so callers measure the dense model in the same
process, with the repeats of both interleaved (:func:`measure_costs`), and report ratios to it
(:func:`cost_ratios`): the median over the repeats of each repeat's ratio, with the lowest and
highest of them as its spread, so that a speed-up the noise could reverse shows as such.
Every figure is measured with ``spec.threads`` threads (default: every core this process may use),
set explicitly, so that the app's background sweeps and ``gisp sweep --cost`` measure alike.
"""

from __future__ import annotations

import ctypes
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch

from ..core.errors import GispError
from ..model.loading import recorded_dtype

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def available_cores() -> int:
    """The cores this process may run on (its affinity), the default thread count of a cost measurement."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def check_workload(spec, counts: tuple[str, ...]) -> None:
    """Refuse a cost workload (of either runtime) with a count under 1, fewer than 3 repeats or no threads."""
    for name in counts:
        if int(getattr(spec, name)) < 1:
            raise GispError(f"cost setting {name} must be at least 1, got {getattr(spec, name)}")
    if spec.repeats < 3:
        raise GispError(f"cost repeats must be at least 3 to give a spread, got {spec.repeats}")
    if spec.threads is not None and int(spec.threads) < 1:
        raise GispError(f"cost threads must be at least 1, got {spec.threads}")


@dataclass(frozen=True)
class CostSpec:
    """One cost workload. The defaults are the CLI's and the app's alike (their results answer each other)."""

    batch: int = 4
    seq_len: int = 128
    prompt_len: int = 16
    new_tokens: int = 16
    repeats: int = 5
    export_dtype: str = "auto"  # bytes of the weights as exported; auto: the checkpoint's dtype
    threads: int | None = None  # None: every core this process may use (``available_cores``)
    runtime: ClassVar[str] = "pytorch"  # not a field: the identity of every PyTorch cost stays as it was
    # (the llama.cpp workload is ``cost_llamacpp.GGUFCostSpec``)

    def __post_init__(self):
        check_workload(self, ("batch", "seq_len", "prompt_len", "new_tokens", "repeats"))
        if self.export_dtype != "auto" and self.export_dtype not in _DTYPE_BYTES:
            raise GispError(f"unknown export dtype {self.export_dtype!r}: auto, {', '.join(_DTYPE_BYTES)}")

    def resolved(self) -> "CostSpec":
        """The spec with its thread count fixed (what identifies a measurement)."""
        from dataclasses import replace

        return self if self.threads is not None else replace(self, threads=available_cores())

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Cost:
    prefill_tok_s: float
    decode_tok_s: float
    peak_bytes: int
    weight_bytes: int  # in ``export_dtype``
    export_dtype: str
    param_count: int
    device: str
    threads: int
    prefill_s: list[float]  # every repeat's prefill time, in the order measured
    decode_s: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


RATIO_FIELDS = {  # figure -> name of its ratio to dense (higher speed is better, lower memory is better)
    "prefill_tok_s": "prefill_speedup",
    "decode_tok_s": "decode_speedup",
    "peak_bytes": "memory_ratio",
    "weight_bytes": "weight_ratio",
    "param_count": "param_ratio",
}


SPEED_TIMES = {"prefill_speedup": "prefill_s", "decode_speedup": "decode_s"}  # speed-up -> its repeats' times


def cost_ratios(cost: dict, dense: dict) -> dict:
    """Each figure of ``cost`` as a ratio to the dense model's (measured in the same process).

    Speed-ups are the median of the repeats' own ratios (repeat i of dense against repeat i of this
    model, measured one after the other), with ``<name>_low``/``<name>_high`` their lowest and highest.
    """
    out = {
        ratio: float(cost[name]) / float(dense[name]) if dense.get(name) else float("nan")
        for name, ratio in RATIO_FIELDS.items()
    }
    for ratio, times in SPEED_TIMES.items():
        mine, theirs = cost.get(times), dense.get(times)
        if mine and theirs and len(mine) == len(theirs):
            paired = [d / m for d, m in zip(theirs, mine)]
            out[ratio] = statistics.median(paired)
            out[f"{ratio}_low"], out[f"{ratio}_high"] = min(paired), max(paired)
    return out


# ---- memory ---------------------------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


def return_freed_memory() -> None:
    """Ask glibc to serve large blocks from mmap, so that freed tensors leave the resident set at once."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 65536)  # M_MMAP_THRESHOLD
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the resident set stays an upper bound
        pass


class PeakMemory:
    """Peak memory while the block runs: CUDA allocator peak on GPU, sampled resident set on CPU."""

    def __init__(self, device: str = "cpu", interval_s: float = 0.002):
        self.device, self.interval_s = str(device), interval_s
        self.peak = 0
        self.baseline = 0

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
            return self
        self.baseline = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval_s)

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())
        return False


# ---- the workload ---------------------------------------------------------------------------
def export_dtype_of(model: torch.nn.Module) -> str:
    """The dtype the model's checkpoint was saved in (what an export keeps), else the loaded dtype."""
    return recorded_dtype(model.config) or str(next(model.parameters()).dtype).removeprefix("torch.")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cache_of(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


class _Workload:
    """One model with the prefill and decode inputs of ``spec`` (the same random tokens for every model)."""

    def __init__(self, model: torch.nn.Module, spec: CostSpec, seed: int):
        import inspect

        self.model, self.spec = model, spec
        self.device = next(model.parameters()).device
        max_len = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        if max_len and max(spec.seq_len, spec.prompt_len + spec.new_tokens) > max_len:
            raise GispError(
                f"the cost workload ({spec.seq_len} prefill tokens, {spec.prompt_len}+{spec.new_tokens} "
                f"decode) is longer than the model's context ({max_len} tokens)"
            )
        gen = torch.Generator().manual_seed(seed)
        vocab = int(model.config.vocab_size)
        self.batch = torch.randint(0, vocab, (spec.batch, spec.seq_len), generator=gen).to(self.device)
        self.prompt = torch.randint(0, vocab, (1, spec.prompt_len), generator=gen).to(self.device)
        self.cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        model.eval()

    def prefill(self) -> float:
        start = time.perf_counter()
        self.model(input_ids=self.batch, use_cache=True, logits_to_keep=1)
        _sync(self.device)
        return time.perf_counter() - start

    def decode(self) -> float:
        out = self.model(input_ids=self.prompt, use_cache=True, logits_to_keep=1)
        cache, token = _cache_of(out), out.logits[:, -1:].argmax(-1)
        _sync(self.device)
        start = time.perf_counter()
        for _ in range(self.spec.new_tokens):
            out = self.model(input_ids=token, use_cache=True, **{self.cache_arg: cache})
            cache, token = _cache_of(out), out.logits[:, -1:].argmax(-1)
        _sync(self.device)
        return time.perf_counter() - start

    def peak_bytes(self) -> int:
        """This model's weights plus the memory one prefill and one decode take above what was resident."""
        return_freed_memory()
        with PeakMemory(str(self.device)) as mem:
            self.prefill()
            self.decode()
        weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return int(weights + max(0, mem.peak - mem.baseline))


def measure_costs(models: list[torch.nn.Module], spec: CostSpec = CostSpec(), seed: int = 0) -> list[Cost]:
    """Cost of each model; their timing repeats are interleaved, so that load on a shared machine hits all alike."""
    spec = spec.resolved()
    before = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        return _measure(models, spec, seed)
    finally:
        torch.set_num_threads(before)


@torch.inference_mode()
def _measure(models: list[torch.nn.Module], spec: CostSpec, seed: int) -> list[Cost]:
    runs = [_Workload(m, spec, seed) for m in models]
    for r in runs:  # warm-up: allocator pools, lazy kernels
        r.prefill(), r.decode()
    prefill_s: list[list[float]] = [[] for _ in runs]
    decode_s: list[list[float]] = [[] for _ in runs]
    for _ in range(spec.repeats):
        for i, r in enumerate(runs):
            prefill_s[i].append(r.prefill())
            decode_s[i].append(r.decode())
    out = []
    for r, p, d in zip(runs, prefill_s, decode_s):
        params = list(r.model.parameters())
        param_count = sum(x.numel() for x in params)
        export_dtype = export_dtype_of(r.model) if spec.export_dtype == "auto" else spec.export_dtype
        out.append(
            Cost(
                prefill_tok_s=spec.batch * spec.seq_len / statistics.median(p),
                decode_tok_s=spec.new_tokens / statistics.median(d),
                peak_bytes=r.peak_bytes(),
                weight_bytes=int(param_count * _DTYPE_BYTES.get(export_dtype, 4)),
                export_dtype=export_dtype,
                param_count=int(param_count),
                device=str(r.device),
                threads=torch.get_num_threads(),
                prefill_s=p,
                decode_s=d,
            )
        )
    return out


def measure_cost(model: torch.nn.Module, spec: CostSpec = CostSpec(), seed: int = 0) -> Cost:
    """Time one prefill and greedy decoding, and take the peak memory, of ``model`` as it is now."""
    return measure_costs([model], spec, seed)[0]
