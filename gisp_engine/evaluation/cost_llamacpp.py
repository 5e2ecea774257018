"""What a GGUF costs to run in llama.cpp: prefill and decode speed, peak memory, file size.

The llama.cpp side of :mod:`gisp_engine.evaluation.cost`: the same figures under the same names, so that
``cost.cost_ratios`` gives the same ratios (medians of the interleaved repeats' own ratios, with their lowest and
highest) and a llama.cpp cost answers the same constraints as a PyTorch one. One :class:`GGUFCostSpec` says the
workload:

  prefill  tokens/s: one sequence of ``seq_len`` random tokens into an empty KV cache, in micro-batches of up
           to 512 (llama.cpp's default), the last position's logits computed
  decode   tokens/s at batch 1: greedy, one token per call, after a ``prompt_len``-token prompt
  memory   how much the process's resident set grows from just before the GGUF is loaded to its peak over loading
           it and one prefill and one decode, with the file read into the process's memory (no mmap), sampled
           every 2 ms. That is what the model really occupies: its weights as llama.cpp holds them, its KV cache
           and as much of its compute buffers as the workload touches. llama.cpp's own buffer sizes overstate it
           (it reserves a worst-case compute buffer, 98 MiB for SmolLM2 at 512 tokens, mostly the logits of every
           position, which a prefill that keeps the last position's never touches), and with mmap the weights
           would sit in the page cache, shared and hard to attribute. ``model_bytes`` (llama.cpp's model buffer)
           is kept beside it.
  weights  bytes of the GGUF file (``weight_bytes``, also ``file_bytes``): what a user downloads and stores; its
           parameters as written (``param_count``, llama.cpp's count: the equal GQA groups llama.cpp needs included)

llama-cpp-python's defaults otherwise (F16 KV cache, no flash attention), on the CPU (no layer offloaded).
Models are timed in one process, their repeats interleaved (:func:`measure_gguf_costs`), with ``spec.threads``
threads (default: every core this process may use, as the PyTorch cost).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..core.errors import GispError
from ..model import llamacpp
from .cost import CostSpec, PeakMemory, available_cores, check_workload, return_freed_memory

RUNTIMES = {"pytorch": "PyTorch", "llamacpp": "llama.cpp"}  # runtime -> its name in words
LAYOUTS = ("per-layer", "uniform")
DEVICE = "cpu"  # llama.cpp runs every layer on the CPU here (no layer offloaded)
MICRO_BATCH = 512  # llama.cpp's default n_ubatch: a longer prefill goes in pieces of this many tokens
_warm = False  # whether this process has loaded a model in llama.cpp yet (see ``GGUFRun``)


@dataclass(frozen=True)
class GGUFCostSpec:
    """One llama.cpp cost workload and the GGUF it times. The defaults are the CLI's and the app's alike.

    512 prefill tokens as in issue 26's measurements; 64 decode tokens and 3 repeats keep a sweep of an 11-step
    SmolLM2 trajectory to about 5 minutes on 2 idle CPU cores (each step's GGUF is written, then timed against the
    dense one).
    """

    seq_len: int = 512  # prefill tokens (one sequence)
    prompt_len: int = 16
    new_tokens: int = 64
    repeats: int = 3
    outtype: str = "f16"  # the GGUF's type (export.gguf.OUTTYPES)
    layout: str = "per-layer"  # per-layer (deci) or uniform (the family's stock arch), as gisp export --format gguf
    align: int | None = None  # every layer's MLP width rounded to a multiple of it at export (None: as pruned)
    threads: int | None = None  # None: every core this process may use (``available_cores``)
    runtime: ClassVar[str] = "llamacpp"

    def __post_init__(self):
        check_workload(self, ("seq_len", "prompt_len", "new_tokens", "repeats"))
        if self.layout not in LAYOUTS:
            raise GispError(f"unknown GGUF layout {self.layout!r}: {' or '.join(LAYOUTS)}")
        if self.align is not None and (isinstance(self.align, bool) or int(self.align) < 1):
            raise GispError(f"--align must be a whole number of at least 1, got {self.align!r}")
        object.__setattr__(self, "outtype", str(self.outtype).lower())
        if self.align == 1:  # rounds nothing: the same GGUF as without (one identity for both)
            object.__setattr__(self, "align", None)

    @property
    def uniform(self) -> bool:
        return self.layout == "uniform"

    def resolved(self) -> "GGUFCostSpec":
        """The spec with its thread count fixed (what identifies a measurement)."""
        return self if self.threads is not None else replace(self, threads=available_cores())

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, **asdict(self)}


def spec_from_dict(d: dict) -> CostSpec | GGUFCostSpec:
    """A cost spec from its ``to_dict``: a PyTorch spec's has no ``runtime`` (as every one stored before)."""
    d = dict(d)
    runtime = d.pop("runtime", "pytorch")
    if runtime == "llamacpp":
        return GGUFCostSpec(**d)
    if runtime != "pytorch":
        raise GispError(f"unknown cost runtime {runtime!r}: {', '.join(RUNTIMES)}")
    return CostSpec(**d)


def spec_label(spec: CostSpec | GGUFCostSpec, device: str) -> str:
    """The runtime and workload in words, e.g. 'llama.cpp cost (per-layer GGUF f16, 512 prefill, decode 64 tokens,
    cpu, 2 threads, median of 3 interleaved repeats)'."""
    repeats = f"{spec.threads} threads, median of {spec.repeats} interleaved repeats"
    if spec.runtime == "llamacpp":
        align = f", MLP widths a multiple of {spec.align}" if spec.align else ""
        return (
            f"llama.cpp cost ({spec.layout} GGUF {spec.outtype}{align}, {spec.seq_len} prefill, "
            f"decode {spec.new_tokens} tokens, {DEVICE}, {repeats})"
        )
    return (
        f"PyTorch cost (batch {spec.batch} x {spec.seq_len} prefill, decode {spec.new_tokens} tokens, {device}, "
        f"{repeats})"
    )


@dataclass
class GGUFCost:
    prefill_tok_s: float
    decode_tok_s: float
    peak_bytes: int  # resident set growth over load + one prefill + one decode (see the module's docstring)
    weight_bytes: int  # the GGUF file's bytes
    file_bytes: int
    model_bytes: int  # llama.cpp's model buffer (every tensor)
    export_dtype: str  # the GGUF's outtype
    param_count: int  # as written (llama.cpp's count)
    device: str
    threads: int
    prefill_s: list[float]  # every repeat's prefill time, in the order measured
    decode_s: list[float]
    runtime: str = "llamacpp"
    runtime_version: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class GGUFRun:
    """One GGUF loaded in llama.cpp with the workload's tokens (the same for every file of one vocabulary).

    Its memory is measured as it loads and runs one prefill and one decode (which also warm it up); close it
    (or use ``with``) when done.
    """

    def __init__(self, path: Path | str, spec: GGUFCostSpec, seed: int = 0):
        global _warm
        spec = spec.resolved()
        self.path, self.spec = Path(path), spec
        if not _warm:  # the process's first model and run also set up llama.cpp itself: not that model's cost
            _warm = True
            GGUFRun(path, spec, seed).close()
        return_freed_memory()  # freed buffers leave the resident set at once: the baseline below is this model's
        with PeakMemory(DEVICE) as mem:
            self.model = self._open()
            try:
                gen = np.random.default_rng(seed)
                self.tokens = gen.integers(0, self.model.n_vocab, spec.seq_len).tolist()
                self.prompt = gen.integers(0, self.model.n_vocab, spec.prompt_len).tolist()
                self.prefill(), self.decode()
            except BaseException:
                self.close()
                raise
        self.peak_bytes = max(0, int(mem.peak - mem.baseline))

    def _open(self) -> llamacpp.GGUFModel:
        spec = self.spec
        return llamacpp.GGUFModel(
            self.path,
            n_ctx=max(spec.seq_len, spec.prompt_len + spec.new_tokens),
            n_threads=spec.threads,
            exact=False,
            logits_all=False,
            n_batch=min(spec.seq_len, MICRO_BATCH),
            use_mmap=False,
        )

    def prefill(self) -> float:
        self.model.reset()
        start = time.perf_counter()
        self.model.eval(self.tokens)
        self.model.last_logits()
        return time.perf_counter() - start

    def decode(self) -> float:
        self.model.reset()
        self.model.eval(self.prompt)
        token = int(np.argmax(self.model.last_logits()))
        start = time.perf_counter()
        for _ in range(self.spec.new_tokens):
            self.model.eval([token])
            token = int(np.argmax(self.model.last_logits()))
        return time.perf_counter() - start

    def cost(self, prefill_s: list[float], decode_s: list[float]) -> GGUFCost:
        spec = self.spec
        return GGUFCost(
            prefill_tok_s=spec.seq_len / statistics.median(prefill_s),
            decode_tok_s=spec.new_tokens / statistics.median(decode_s),
            peak_bytes=self.peak_bytes,
            weight_bytes=self.path.stat().st_size,
            file_bytes=self.path.stat().st_size,
            model_bytes=self.model.model_bytes,
            export_dtype=spec.outtype,
            param_count=self.model.n_params,
            device=DEVICE,
            threads=int(spec.threads),
            prefill_s=list(prefill_s),
            decode_s=list(decode_s),
            runtime_version=llamacpp.version(),
        )

    def close(self) -> None:
        model, self.model = getattr(self, "model", None), None
        if model is not None:
            model.close()
        return_freed_memory()

    def __enter__(self) -> "GGUFRun":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def measure_gguf_costs(runs: list[GGUFRun]) -> list[GGUFCost]:
    """Cost of each loaded GGUF; their timing repeats interleaved, so that load on a shared machine hits all alike.

    Every run was warmed up as it loaded (its memory window); they share one spec's repeats.
    """
    repeats = runs[0].spec.repeats
    if any(r.spec.repeats != repeats or r.tokens != runs[0].tokens for r in runs):
        raise GispError("internal error: GGUF costs timed together need one workload")
    prefill_s: list[list[float]] = [[] for _ in runs]
    decode_s: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for i, r in enumerate(runs):
            prefill_s[i].append(r.prefill())
            decode_s[i].append(r.decode())
    return [r.cost(p, d) for r, p, d in zip(runs, prefill_s, decode_s)]
