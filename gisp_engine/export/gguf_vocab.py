"""A model's tokenizer as GGUF metadata (``tokenizer.*``), so that llama.cpp tokenizes as transformers does.

Two exact paths:

* **embedded models** (``model.loading.EMBEDDED_MODELS``) were converted from a GGUF: its own ``tokenizer.*``
  entries are copied as they are;
* **any other model** is read from its ``tokenizer.json`` the way llama.cpp's converter reads it:
  a byte-level BPE (GPT-2 style) becomes ``tokenizer.ggml.model = gpt2`` with its tokens, token types,
  merges and the pre-tokenizer llama.cpp knows it by (``PRE_TOKENIZERS``: the hash of a fixed text's
  token ids, as in ``convert_hf_to_gguf.py``, else the plain GPT-2 byte-level pre-tokenizer recognised
  from the file); a SentencePiece-style BPE (byte fallback, ``▁`` for spaces: Llama 2, Gemma) becomes
  ``llama`` with scores that order merges as the file's merge ranks do. Special tokens (BOS, EOS, PAD,
  whether BOS is added, the chat template) come from ``gguf.SpecialVocab``.

Anything else is refused with one line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

from ..core.errors import GispError

# The text llama.cpp's converter tokenizes to recognise a BPE pre-tokenizer (convert_hf_to_gguf.py,
# get_vocab_base_pre): the SHA-256 of str(token ids) names it.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
# Hash -> llama.cpp pre-tokenizer, for the families this project prunes (from the converter's table).
PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # HuggingFaceTB/SmolLM-135M
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # openai-community/gpt2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # meta-llama/Meta-Llama-3-8B
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen/Qwen1.5-7B
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen/Qwen3-Embedding-0.6B
}
GPT2_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}

# gguf.TokenType values (kept here so that reading this module needs no gguf import)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass
class VocabRecord:
    """How the tokenizer was written (for the manifest)."""

    source: str  # "embedded-gguf" or "tokenizer.json"
    model: str  # tokenizer.ggml.model
    pre: str | None
    tokens: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# ---- the embedded models: copied from their own GGUF --------------------------------------------
def embedded_source(model_id: str, folder: Path) -> str | None:
    """The embedded model's name when ``folder`` is one's conversion (from a GGUF this project carries)."""
    from ..model.loading import EMBEDDED_MODELS, embedded_model_dir

    if model_id in EMBEDDED_MODELS and Path(folder).resolve() == embedded_model_dir(model_id).resolve():
        return model_id
    return None


def read_metadata(path: Path, prefix: str = "") -> list[tuple[str, int, object, int | None]]:
    """The key-value entries of a GGUF file whose key starts with ``prefix``: (key, value type, value, item type).

    Reads only the header, sequentially (gguf's ``GGUFReader`` maps every field and takes seconds for a
    large vocabulary); a chunked file's first chunk holds it whole.
    """
    import struct

    from gguf import GGUFValueType as V

    scalars = {
        V.UINT8: "<B",
        V.INT8: "<b",
        V.UINT16: "<H",
        V.INT16: "<h",
        V.UINT32: "<I",
        V.INT32: "<i",
        V.FLOAT32: "<f",
        V.BOOL: "<?",
        V.UINT64: "<Q",
        V.INT64: "<q",
        V.FLOAT64: "<d",
    }
    numpy_types = {
        V.UINT8: "<u1",
        V.INT8: "<i1",
        V.UINT16: "<u2",
        V.INT16: "<i2",
        V.UINT32: "<u4",
        V.INT32: "<i4",
        V.FLOAT32: "<f4",
        V.BOOL: "?",
        V.UINT64: "<u8",
        V.INT64: "<i8",
        V.FLOAT64: "<f8",
    }
    import numpy as np

    with open(path, "rb") as f:
        data = f.read(64 << 20)  # a header is a few MB even for a 262k-token vocabulary
    view = memoryview(data)
    pos = 0

    def take(fmt: str):
        nonlocal pos
        value = struct.unpack_from(fmt, view, pos)
        pos += struct.calcsize(fmt)
        return value[0]

    def string() -> str:
        nonlocal pos
        n = take("<Q")
        pos += n
        return str(view[pos - n : pos], "utf-8")

    try:
        if bytes(view[:4]) != b"GGUF" or struct.unpack_from("<I", view, 4)[0] < 2:
            raise GispError(f"{path} is not a GGUF file (version 2 or later)")
        pos = 8
        take("<Q")  # tensor count
        entries = []
        for _ in range(take("<Q")):
            key, kind = string(), V(take("<I"))
            if kind == V.STRING:
                value, sub = string(), None
            elif kind == V.ARRAY:
                sub, count = V(take("<I")), take("<Q")
                if sub == V.STRING:
                    value = [string() for _ in range(count)]
                else:
                    width = struct.calcsize(scalars[sub])
                    value = np.frombuffer(view, numpy_types[sub], count, pos).tolist()
                    pos += width * count
            else:
                value, sub = take(scalars[kind]), None
            if key.startswith(prefix):
                entries.append((key, kind, value, sub))
    except (struct.error, ValueError) as exc:
        raise GispError(f"cannot read the header of {path} ({exc})") from None
    return entries


def copy_embedded_vocab(writer, name: str) -> VocabRecord:
    """Copy every ``tokenizer.*`` entry of the GGUF the embedded model ``name`` was converted from."""
    from ..model.loading import embedded_gguf_path

    entries = read_metadata(embedded_gguf_path(name), "tokenizer.")
    for key, kind, value, sub in entries:
        writer.add_key_value(key, value, kind, sub_type=sub)
    found = {key: value for key, _, value, _ in entries}
    if "tokenizer.ggml.tokens" not in found:
        raise GispError(f"the GGUF of {name} holds no tokenizer")
    return VocabRecord(
        f"embedded-gguf ({name})",
        found["tokenizer.ggml.model"],
        found.get("tokenizer.ggml.pre"),
        len(found["tokenizer.ggml.tokens"]),
    )


# ---- any model: from tokenizer.json, as llama.cpp's converter reads it ---------------------------
def _tokenizer_json(folder: Path) -> dict:
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise GispError(f"{folder} has no tokenizer.json: its tokenizer cannot be written into a GGUF")
    return json.loads(path.read_text(encoding="utf-8"))


def looks_special(token: str) -> bool:
    """Added tokens that some tokenizers do not mark special but that are (as the converter judges them)."""
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def pre_tokenizer(tokenizer, spec: dict) -> str:
    """llama.cpp's name for a byte-level BPE's pre-tokenizer (see ``PRE_TOKENIZERS``)."""
    digest = sha256(str(tokenizer.encode(CHECK_TEXT)).encode()).hexdigest()
    if digest in PRE_TOKENIZERS:
        return PRE_TOKENIZERS[digest]
    pre = spec.get("pre_tokenizer") or {}
    if all(pre.get(k) == v for k, v in GPT2_BYTE_LEVEL.items()):
        return "gpt-2"
    raise GispError(
        f"llama.cpp does not know this tokenizer's pre-tokenizer (hash {digest[:12]}, {pre.get('type')}): "
        "its GGUF would tokenize differently; only SmolLM, GPT-2, Llama 3, Qwen 2/3 and plain byte-level BPE "
        "are written"
    )


def _hf_tokens(tokenizer, vocab_size: int, spm: bool) -> tuple[list[str], list[int]]:
    """Tokens and types by id, as the converter's ``get_vocab_base`` makes them (``[PADi]`` where no token)."""
    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    if max(reverse) >= vocab_size:
        raise GispError(f"the tokenizer has ids up to {max(reverse)}, more than the model's {vocab_size} embeddings")
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        token = reverse[i]
        if token in added:
            if not spm and not decoder[i].normalized:  # llama.cpp assumes added tokens pre-normalized
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            if decoder[i].special or looks_special(token):
                types.append(CONTROL)
            else:
                types.append(USER_DEFINED)
                token = token.replace("\u2581", " ")
        elif spm and _BYTE_TOKEN.fullmatch(token):
            types.append(BYTE)
        else:
            types.append(NORMAL)
        tokens.append(token)
    return tokens, types


def _merge_scores(spec: dict, tokens: list[str]) -> list[float]:
    """SentencePiece scores that order merges as the BPE's merge ranks (llama.cpp merges the best score first)."""
    rank: dict[str, int] = {}
    for r, merge in enumerate(spec["model"].get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, r)
    return [-float(rank[t]) if t in rank else 0.0 for t in tokens]


def write_hf_vocab(writer, folder: Path, tokenizer, vocab_size: int) -> VocabRecord:
    """Write the tokenizer of a model folder (``tokenizer.json``) as llama.cpp's converter does."""
    import gguf

    spec = _tokenizer_json(folder)
    model = spec.get("model") or {}
    decoder = spec.get("decoder") or {}
    if model.get("type") != "BPE":
        raise GispError(f"{folder}: a {model.get('type')} tokenizer cannot be written into a GGUF here (only BPE)")
    spm = bool(model.get("byte_fallback")) and decoder.get("type") == "Sequence"
    tokens, types = _hf_tokens(tokenizer, vocab_size, spm)
    if spm:
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(_merge_scores(spec, tokens))
        writer.add_token_types(types)
        normalizers = spec.get("normalizer") or {}
        steps = normalizers.get("normalizers", [normalizers])
        writer.add_add_space_prefix(any(s.get("type") == "Prepend" for s in steps))
        special = gguf.SpecialVocab(folder, load_merges=False, n_vocab=len(tokens))
        pre = None
    else:
        pre = pre_tokenizer(tokenizer, spec)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    special.add_to_gguf(writer, quiet=True)
    return VocabRecord("tokenizer.json", "llama" if spm else "gpt2", pre, len(tokens))


def write_vocab(
    writer, model_id: str, folder: Path, tokenizer, vocab_size: int, from_tokenizer_json: bool = False
) -> VocabRecord:
    """A model's tokenizer into ``writer``: an embedded model's own GGUF entries (unless ``from_tokenizer_json``),
    else its ``tokenizer.json``."""
    name = None if from_tokenizer_json else embedded_source(model_id, folder)
    if name is not None:
        return copy_embedded_vocab(writer, name)
    return write_hf_vocab(writer, Path(folder), tokenizer, vocab_size)
