"""llama.cpp as a runtime: load a GGUF, its logits, greedy tokens and tokenizer, and its quantizer.

Through ``llama-cpp-python`` (pinned: ``RUNTIME``), which builds llama.cpp from source when pip installs
it; this is the only module that imports it. Every model opened here is closed explicitly (``close`` or
``with``): left to the garbage collector, ``Llama.__del__`` prints an ignored ``TypeError`` at interpreter
exit. llama.cpp's own log never reaches the terminal: its warnings and errors are kept (``last_log``) and
quoted in the one-line errors raised here.

``exact=True`` (the default) is the setting the export is checked in: F32 KV cache, no flash attention,
logits of every position kept.
"""

from __future__ import annotations

import collections
import ctypes
import importlib.metadata
import os
from pathlib import Path

import numpy as np

from ..core.errors import GispError

RUNTIME = "llama-cpp-python==0.3.36"
BUILD_MINUTES = 10  # pip building it from source (make setup): 19 CPU-minutes measured, on 2 idle cores
INSTALL_HINT = f"pip install {RUNTIME} (builds llama.cpp from source, about {BUILD_MINUTES} min on 2 CPU cores)"

#: llama.cpp's own quantizer (``llama_model_quantize``): outtype -> ``llama_ftype`` constant name
QUANT_TYPES: dict[str, str] = {
    "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
    "q3_k_s": "LLAMA_FTYPE_MOSTLY_Q3_K_S",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q3_k_l": "LLAMA_FTYPE_MOSTLY_Q3_K_L",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
}
GGML_TYPE_F32 = 0  # ggml_type of an F32 KV cache
GGML_LOG_WARN, GGML_LOG_ERROR = 3, 4  # ggml_log_level (ggml.h)

_LOG: collections.deque[str] = collections.deque(maxlen=40)
_SINK = None  # the ctypes log callback, kept alive for as long as llama.cpp may call it


def available() -> bool:
    """Whether the runtime can be imported here (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def version() -> str | None:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return None


def runtime():
    """The ``llama_cpp`` module, its log routed into ``last_log``; a one-line GispError when absent."""
    global _SINK
    try:
        import llama_cpp
    except (ImportError, OSError, RuntimeError) as exc:  # absent, or its shared library did not load
        raise GispError(f"the llama.cpp runtime is not installed ({exc}): {INSTALL_HINT}") from None
    if _SINK is None:

        @llama_cpp.llama_log_callback
        def sink(level: int, text: bytes, user_data) -> None:
            if level in (GGML_LOG_WARN, GGML_LOG_ERROR):
                _LOG.append(text.decode("utf-8", "replace").strip())

        _SINK = sink
        llama_cpp.llama_log_set(_SINK, ctypes.c_void_p(0))
    return llama_cpp


def last_log() -> str:
    """What llama.cpp said last: its last error line (the reason, before its generic "failed to load"), else
    its last warning."""
    kept = [line for line in _LOG if line]
    errors = [line for line in kept if "error" in line.lower()]
    return (errors or kept or ["no message"])[-1]


def _threads(n_threads: int | None) -> int:
    return n_threads or max(1, min(os.cpu_count() or 1, 4))


class GGUFModel:
    """A GGUF loaded in llama.cpp: logits for token ids, greedy decoding, its tokenizer.

    ``exact``: F32 KV cache and no flash attention (what checks against transformers use);
    otherwise llama.cpp's defaults (F16 cache, flash attention where it chooses). ``logits_all``: keep
    every position's logits (``logits``); without it (timing) only the last token's are read
    (``eval``, ``last_logits``, ``greedy``), and nothing is copied per token. ``use_mmap=False``: the weights
    read into the process's own memory instead of mapped from the file (what a memory measurement counts).
    """

    def __init__(
        self,
        path: Path | str,
        n_ctx: int = 512,
        n_threads: int | None = None,
        exact: bool = True,
        n_batch: int | None = None,
        logits_all: bool = True,
        use_mmap: bool = True,
    ):
        llama_cpp = runtime()
        self._lib = llama_cpp
        self.path = Path(path)
        if not self.path.is_file():
            raise GispError(f"GGUF file {self.path} does not exist")
        threads = _threads(n_threads)
        self.logits_all = logits_all
        kwargs = dict(
            model_path=str(self.path),
            n_ctx=n_ctx,
            n_batch=n_batch or n_ctx,
            n_ubatch=n_batch or n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=logits_all,
            use_mmap=use_mmap,
            verbose=False,
        )
        if exact:
            kwargs.update(flash_attn=False, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
        _LOG.clear()
        try:
            self.llama = llama_cpp.Llama(**kwargs)
        except (ValueError, RuntimeError) as exc:
            raise GispError(f"llama.cpp cannot load {self.path}: {last_log()} ({exc})") from None
        self.n_ctx = n_ctx
        self.n_vocab = self.llama.n_vocab()

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.llama.metadata)

    @property
    def n_params(self) -> int:
        """Parameters of the model as written in the file (llama.cpp's count)."""
        return int(self._lib.llama_model_n_params(self.llama.model))

    @property
    def model_bytes(self) -> int:
        """Bytes of every tensor of the model (llama.cpp's model buffer)."""
        return int(self._lib.llama_model_size(self.llama.model))

    def _check_length(self, n: int) -> None:
        if n > self.n_ctx:
            raise GispError(f"{n} tokens do not fit the context of {self.n_ctx} this model was opened with")

    def reset(self) -> None:
        """Start a fresh sequence (the KV cache is reused from position 0)."""
        self.llama.reset()

    def eval(self, ids: list[int]) -> None:
        """Feed ``ids`` after what was fed since the last ``reset`` (a prefill, or one decoded token)."""
        self._check_length(self.llama.n_tokens + len(ids))
        self.llama.eval(list(map(int, ids)))

    def last_logits(self) -> np.ndarray:
        """The logits after the last token fed (a view into llama.cpp's buffer: copy it to keep it)."""
        pointer = self._lib.llama_get_logits_ith(self.llama.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits at every position of ``ids`` (a fresh sequence), float32, ``(len(ids), n_vocab)``."""
        if not self.logits_all:
            raise GispError("this model was opened without logits_all: only last_logits() is kept")
        self.reset()
        self.eval(ids)
        return np.array(self.llama.scores[: len(ids)], dtype=np.float32)

    def greedy(self, ids: list[int], new_tokens: int) -> list[int]:
        """``new_tokens`` tokens by argmax after ``ids`` (never stopping at an end token)."""
        self._check_length(len(ids) + new_tokens)
        self.reset()
        self.eval(ids)
        out: list[int] = []
        for _ in range(new_tokens):
            out.append(int(np.argmax(self.last_logits())))
            self.eval(out[-1:])
        return out

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of ``text``; ``add_special`` adds BOS/EOS as the GGUF's tokenizer flags say."""
        return self.llama.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)

    def detokenize(self, ids: list[int]) -> str:
        return self.llama.detokenize(list(map(int, ids))).decode("utf-8", "replace")

    def close(self) -> None:
        llama, self.llama = getattr(self, "llama", None), None
        if llama is not None:
            llama.close()

    def __enter__(self) -> "GGUFModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class GGUFVocab:
    """Only the tokenizer of a GGUF (``vocab_only``: no weights read), for tokenizing many texts."""

    def __init__(self, path: Path | str):
        self._lib = runtime()
        params = self._lib.llama_model_default_params()
        params.vocab_only = True
        _LOG.clear()
        self._model = self._lib.llama_model_load_from_file(str(path).encode("utf-8"), params)
        if not self._model:
            raise GispError(f"llama.cpp cannot read the tokenizer of {path}: {last_log()}")
        self._vocab = self._lib.llama_model_get_vocab(self._model)

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        size = len(data) + 16
        while True:
            buf = (self._lib.llama_token * size)()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, size, add_special, parse_special)
            if n >= 0:
                return list(buf[:n])
            size = -n

    def close(self) -> None:
        model, self._model = getattr(self, "_model", None), None
        if model:
            self._lib.llama_model_free(model)

    def __enter__(self) -> "GGUFVocab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def quantize(source: Path | str, target: Path | str, outtype: str, n_threads: int | None = None) -> None:
    """Quantize a float GGUF with llama.cpp's own quantizer (``llama_model_quantize``), e.g. ``q4_k_m``.

    Tensors whose rows do not split into the type's blocks get llama.cpp's fallback type (as its
    ``llama-quantize`` does); 1-D tensors stay F32.
    """
    if outtype not in QUANT_TYPES:
        raise GispError(f"unknown llama.cpp quantization {outtype!r}: use one of {', '.join(QUANT_TYPES)}")
    lib = runtime()
    params = lib.llama_model_quantize_default_params()
    params.ftype = getattr(lib, QUANT_TYPES[outtype])
    params.nthread = _threads(n_threads)
    _LOG.clear()
    rc = lib.llama_model_quantize(str(source).encode("utf-8"), str(target).encode("utf-8"), ctypes.byref(params))
    if rc != 0:
        raise GispError(f"llama.cpp could not quantize {source} to {outtype}: {last_log()}")
