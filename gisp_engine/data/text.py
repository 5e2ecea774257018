"""One loader per data source: calibration text and WikiText-2, local files or the hub.

Local files are read from the data directory (``$GISP_DATA_DIR``, see ``settings``); the
Hugging Face hub is used through ``datasets`` unless the offline setting is on. Every
problem with a file (missing, empty, malformed line) is a ``GispError`` naming the file
and, where there is one, the line.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..core import settings
from ..core.errors import GispError
from ..core.fsutil import sha256_file


@dataclass(frozen=True)
class TextSource:
    """Where calibration text comes from, and everything that identifies it."""

    kind: str  # "file" or "hub"
    name: str  # the user's spelling (alias, path or hub spec)
    path: str | None = None
    hub: dict = field(default_factory=dict)  # dataset, config, split, field, data_files

    def identity(self) -> dict:
        if self.kind == "file":
            return {"kind": "file", "file": Path(self.path).name, "sha256": file_sha256(Path(self.path))}
        return {"kind": "hub", **self.hub}


# Hub fallbacks for the aliases, used when the offline copy is absent and the hub is allowed.
_HUB_ALIASES = {
    "lambada": {"dataset": "EleutherAI/lambada_openai", "config": "en", "split": "test", "field": "text"},
    "c4": {
        "dataset": "allenai/c4",
        "config": None,
        "data_files": "en/c4-train.00000-of-01024.json.gz",
        "split": "train",
        "field": "text",
    },
    "wikitext2": {"dataset": "wikitext", "config": "wikitext-2-raw-v1", "split": "train", "field": "text"},
}
_LOCAL_ALIASES = {"lambada": "calib/lambada_openai.jsonl"}
CALIB_ALIASES = tuple(sorted(_HUB_ALIASES))


def file_sha256(path: Path, _memo: dict = {}) -> str:  # noqa: B006 - deliberate per-process memo
    """SHA-256 of a data file, computed once per process for each (path, size, mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _memo:
        _memo[key] = sha256_file(path)
    return _memo[key]


def require_data_dir() -> Path:
    root = settings.data_dir()
    if root is None:
        raise GispError(
            "no data directory: set GISP_DATA_DIR to the folder that holds calib/, cmqa/, gsm8k/, wikitext2/"
        )
    if not root.is_dir():
        raise GispError(f"data directory {root} does not exist (GISP_DATA_DIR)")
    return root


def _hub_allowed(what: str) -> None:
    if settings.offline():
        raise GispError(
            f"{what} is not in the data directory and the hub is off (GISP_OFFLINE/HF_HUB_OFFLINE): "
            "set GISP_DATA_DIR to the offline data, or unset the offline setting"
        )


def resolve_text_source(spec: str) -> TextSource:
    """Turn ``--calib`` into a source: an alias, a local file, or ``hf:DATASET[:CONFIG[:SPLIT[:FIELD]]]``."""
    spec = (spec or "").strip()
    if not spec:
        raise GispError("empty calibration source: give an alias (lambada, c4, wikitext2), a file, or hf:DATASET")
    if spec in _HUB_ALIASES:
        local = _LOCAL_ALIASES.get(spec)
        root = settings.data_dir()
        if local and root is not None and (root / local).is_file():
            return TextSource("file", spec, path=str(root / local))
        _hub_allowed(f"calibration set {spec!r}")
        return TextSource("hub", spec, hub=dict(_HUB_ALIASES[spec]))
    if spec.startswith("hf:"):
        parts = spec[3:].split(":")
        if not parts[0]:
            raise GispError(f"bad hub source {spec!r}: expected hf:DATASET[:CONFIG[:SPLIT[:FIELD]]]")
        parts += [None] * (4 - len(parts))
        dataset, config, split, text_field = parts[:4]
        _hub_allowed(f"hub dataset {dataset!r}")
        hub = {"dataset": dataset, "config": config or None, "split": split or "train", "field": text_field or "text"}
        return TextSource("hub", spec, hub=hub)
    path = Path(spec).expanduser()
    if not path.is_absolute() and not path.exists() and settings.data_dir() is not None:
        path = settings.data_dir() / spec
    if not path.is_file():
        raise GispError(
            f"calibration data {spec!r} not found: give an existing file, an alias ({', '.join(CALIB_ALIASES)}), "
            "or hf:DATASET[:CONFIG[:SPLIT[:FIELD]]]"
        )
    return TextSource("file", spec, path=str(path.resolve()))


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSON-lines file; a malformed line is an error naming the file and line."""
    return [record for _, record in read_jsonl_numbered(path)]


def read_jsonl_numbered(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) for every record of a JSON-lines file, so later checks can name the line."""
    if not path.is_file():
        raise GispError(f"data file {path} not found")
    records = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise GispError(f"{path}:{lineno}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as exc:  # JSONDecodeError, and too-long numbers or nesting
                raise GispError(f"{path}:{lineno}: malformed JSON ({getattr(exc, 'msg', str(exc))})") from None
            if not isinstance(record, dict):
                raise GispError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            records.append((lineno, record))
    if not records:
        raise GispError(f"{path} holds no records")
    return records


def _document_of(record: dict, where: str) -> str:
    if isinstance(record.get("text"), str):
        return record["text"]
    if isinstance(record.get("context"), str) and isinstance(record.get("continuation"), str):
        return record["context"] + record["continuation"]
    raise GispError(f"{where}: a record needs a string 'text', or 'context' and 'continuation'")


def load_documents(source: TextSource) -> list[str]:
    """The documents of a calibration source, in file order."""
    if source.kind == "file":
        path = Path(source.path)
        if path.suffix == ".jsonl":
            docs = []
            for n, record in enumerate(read_jsonl(path), 1):
                docs.append(_document_of(record, f"{path}: record {n}"))
        else:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise GispError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            docs = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        docs = _load_hub_texts(source.hub)
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise GispError(f"calibration source {source.name!r} holds no text")
    return docs


def _load_hub_texts(hub: dict) -> list[str]:
    import datasets

    kwargs = {"split": hub.get("split") or "train"}
    if hub.get("data_files"):
        kwargs["data_files"] = hub["data_files"]
    try:
        ds = datasets.load_dataset(hub["dataset"], hub.get("config"), **kwargs)
    except Exception as exc:  # network, unknown dataset, bad config: all the user's to fix
        raise GispError(f"could not load hub dataset {hub['dataset']!r}: {str(exc).splitlines()[0]}") from None
    text_field = hub.get("field") or "text"
    if text_field not in ds.column_names:
        raise GispError(f"hub dataset {hub['dataset']!r} has no column {text_field!r} (columns: {ds.column_names})")
    return [t for t in ds[text_field] if isinstance(t, str)]


SAMPLINGS = ("packed", "window")
#: Where a window's BOS token comes from. ``stream``: windows are cut from one token stream with no BOS
#: (the pruning papers' loaders; WikiText-2 then has at most one, at the very start of the split).
#: ``each``: every window starts with the tokenizer's BOS, ``seq_len`` tokens in all. ``auto``: ``each``
#: for the families trained to see a BOS first (``adapters.BOS_FAMILIES``: Gemma 3), ``stream`` for the others.
BOS_POLICIES = ("auto", "each", "stream")
#: The policies in words, for a flag's or a widget's help (the CLI, the Run, Evaluate and Choose pages).
BOS_POLICY_HELP = (
    "each: a BOS token starts every window; stream: windows cut from one token stream (the papers' protocol); "
    "auto: each for families trained with one (Gemma 3), else stream"
)


def resolve_bos(policy: str, family: str | None) -> str:
    """``each`` or ``stream`` for ``policy`` and a model family (``auto``: by the family; unknown: ``stream``)."""
    if policy not in BOS_POLICIES:
        raise GispError(f"unknown BOS policy {policy!r}: choose one of {', '.join(BOS_POLICIES)}")
    if policy != "auto":
        return policy
    from ..model.adapters import BOS_FAMILIES

    return "each" if family in BOS_FAMILIES else "stream"


def bos_token_id(tokenizer) -> int:
    """The tokenizer's BOS id, or a GispError saying that ``--bos each`` cannot be used with it."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        raise GispError(
            f"the tokenizer of {getattr(tokenizer, 'name_or_path', 'this model')!r} has no BOS token: use --bos stream"
        )
    return int(bos)


def with_bos(rows: "torch.Tensor", bos_id: int) -> "torch.Tensor":  # noqa: F821
    """``rows`` (n, L) with a column of ``bos_id`` in front: (n, L + 1)."""
    import torch

    return torch.cat([torch.full((rows.shape[0], 1), bos_id, dtype=rows.dtype), rows], dim=1)


SEPARATOR = "\n\n"  # between documents, in the packed stream and in the window sampler's stream
# window sampling takes windows inside documents when at least this many times num_samples documents
# are long enough; otherwise (LAMBADA at 128 tokens: 26 of 5153) it takes windows of the joined stream
DOCUMENTS_PER_WINDOW = 10
_PACKED_DESCRIPTION = "documents in seeded random order, joined with a blank line, cut into windows"


@dataclass(frozen=True)
class CalibrationSet:
    """Token windows for calibration and the record of where they came from (enough to rebuild them)."""

    input_ids: "torch.Tensor"  # noqa: F821 - (num_samples, seq_len), int64
    source: TextSource
    documents_used: list[int]  # indices (file order) of the documents the windows hold tokens of
    seed: int
    sampling: str = "packed"
    mode: str = "packed"  # packed; window: "documents" (one document per window) or "stream"
    window_documents: list[int] | None = None  # mode "documents": the document of each window
    window_starts: list[int] | None = None  # window: first token of each window, in its document or the stream
    note: str = ""  # why the window sampler chose its mode
    bos: str = "stream"  # each: every window is the tokenizer's BOS then seq_len - 1 tokens of text

    def describe(self) -> dict:
        n, length = self.input_ids.shape
        out = {
            "source": self.source.name,
            **self.source.identity(),
            "num_samples": int(n),
            "seq_len": int(length),
            "seed": self.seed,
            "sampling": self.sampling,
            "bos": self.bos,
        }
        if self.sampling == "packed":
            out["packing"] = _PACKED_DESCRIPTION
        else:
            out["mode"] = self.mode
            out["packing"] = (
                "each window a random span of a random document with more than seq_len tokens"
                if self.mode == "documents"
                else "documents in file order joined with a blank line; each window a random span of that stream"
            )
            out["note"] = self.note
            if self.window_documents is not None:
                out["window_documents"] = self.window_documents
            out["window_starts"] = self.window_starts
        out["documents_used"] = self.documents_used
        return out


def build_calibration(
    tokenizer,
    source: TextSource,
    num_samples: int,
    seq_len: int,
    seed: int,
    sampling: str = "packed",
    bos: str = "stream",
) -> CalibrationSet:
    """``num_samples`` windows of ``seq_len`` tokens, seeded, by one of the ``SAMPLINGS``.

    ``packed`` shuffles the documents and cuts the first ``num_samples * seq_len`` tokens of
    their joined stream. ``window`` is the reference loaders' sampler (Wanda, SparseGPT, GISP):
    each window is a random span of a random document longer than ``seq_len``, or, when too few
    documents are that long, a random span of all documents joined. ``bos`` (resolved: ``each`` or
    ``stream``, see ``resolve_bos``): with ``each`` the text spans are ``seq_len - 1`` tokens and every
    window starts with the tokenizer's BOS.
    """
    if sampling not in SAMPLINGS:
        raise GispError(f"unknown sampling {sampling!r}: choose one of {', '.join(SAMPLINGS)}")
    if bos not in ("each", "stream"):
        raise GispError(f"the calibration needs a resolved BOS policy (each or stream), got {bos!r}")
    if bos == "each" and seq_len < 2:
        raise GispError("--seq-len must be at least 2 to hold a BOS token and text")
    bos_id = bos_token_id(tokenizer) if bos == "each" else None
    text_len = seq_len - 1 if bos == "each" else seq_len
    docs = load_documents(source)
    if sampling == "window":
        made = _sample_windows(tokenizer, source, docs, num_samples, text_len, seed)
    else:
        made = _pack(tokenizer, source, docs, num_samples, text_len, seed)
    if bos_id is None:
        return made
    return dataclasses.replace(made, input_ids=with_bos(made.input_ids, bos_id), bos="each")


def _pack(tokenizer, source: TextSource, docs: list[str], num_samples: int, seq_len: int, seed: int) -> CalibrationSet:
    import torch

    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    needed = num_samples * seq_len
    separator = tokenizer(SEPARATOR, add_special_tokens=False)["input_ids"]
    tokens: list[int] = []
    used: list[int] = []
    for i in order:
        if len(tokens) >= needed:
            break
        ids = tokenizer(docs[i], add_special_tokens=False)["input_ids"]
        if not ids:
            continue
        if tokens:
            tokens.extend(separator)
        tokens.extend(ids)
        used.append(i)
    if len(tokens) < needed:
        raise GispError(
            f"calibration source {source.name!r} has {len(tokens)} tokens, fewer than "
            f"{num_samples} x {seq_len} = {needed}: lower --num-samples or --seq-len"
        )
    ids = torch.tensor(tokens[:needed], dtype=torch.long).view(num_samples, seq_len)
    return CalibrationSet(ids, source, used, seed)


class _Tokens:
    """Token ids of each document, tokenized the first time they are asked for."""

    def __init__(self, tokenizer, docs: list[str]):
        self.tokenizer, self.docs, self.memo = tokenizer, docs, {}

    def __call__(self, i: int) -> list[int]:
        if i not in self.memo:
            self.memo[i] = self.tokenizer(self.docs[i], add_special_tokens=False)["input_ids"]
        return self.memo[i]


def _stream(tokens: _Tokens, separator: list[int]) -> tuple[list[int], list[int]]:
    """All documents in file order joined by ``separator``, and where each document starts in it."""
    stream: list[int] = []
    starts: list[int] = []
    for i in range(len(tokens.docs)):
        if stream:
            stream.extend(separator)
        starts.append(len(stream))
        stream.extend(tokens(i))
    return stream, starts


def _documents_spanned(doc_starts: list[int], start: int, stop: int) -> list[int]:
    first = bisect.bisect_right(doc_starts, start) - 1
    last = bisect.bisect_left(doc_starts, stop) - 1
    return list(range(max(first, 0), last + 1))


def _sample_windows(
    tokenizer, source: TextSource, docs: list[str], num_samples: int, seq_len: int, seed: int
) -> CalibrationSet:
    import torch

    tokens = _Tokens(tokenizer, docs)
    wanted = DOCUMENTS_PER_WINDOW * num_samples
    long_enough = 0
    for i in range(len(docs)):  # stops early on sources of long documents (C4): only a few are tokenized
        long_enough += len(tokens(i)) > seq_len
        if long_enough >= wanted:
            break
    rng = random.Random(seed)
    rows: list[list[int]] = []
    starts: list[int] = []
    if long_enough >= wanted:
        mode, note = "documents", f"at least {wanted} documents have more than {seq_len} tokens"
        window_documents: list[int] | None = []
        for _ in range(num_samples):
            while True:  # as the reference loaders: redraw until a document is long enough
                i = rng.randint(0, len(docs) - 1)
                if len(tokens(i)) > seq_len:
                    break
            start = rng.randint(0, len(tokens(i)) - seq_len - 1)
            window_documents.append(i)
            starts.append(start)
            rows.append(tokens(i)[start : start + seq_len])
        used = sorted(set(window_documents))
    else:
        mode = "stream"
        note = (
            f"only {long_enough} of {len(docs)} documents have more than {seq_len} tokens "
            f"(fewer than {DOCUMENTS_PER_WINDOW} x {num_samples}): windows of the joined documents"
        )
        window_documents = None
        stream, doc_starts = _stream(tokens, tokenizer(SEPARATOR, add_special_tokens=False)["input_ids"])
        if len(stream) <= seq_len:
            raise GispError(
                f"calibration source {source.name!r} has {len(stream)} tokens, not more than one window of "
                f"{seq_len}: lower --seq-len or give a longer source"
            )
        used_set: set[int] = set()
        for _ in range(num_samples):
            start = rng.randint(0, len(stream) - seq_len - 1)
            starts.append(start)
            rows.append(stream[start : start + seq_len])
            used_set.update(_documents_spanned(doc_starts, start, start + seq_len))
        used = sorted(used_set)
    ids = torch.tensor(rows, dtype=torch.long)
    return CalibrationSet(ids, source, used, seed, "window", mode, window_documents, starts, note)


def rebuild_calibration(tokenizer, described: dict) -> "torch.Tensor":  # noqa: F821
    """The calibration tensor a trajectory recorded (``meta["objective"]["calibration"]``), from its record.

    Reads the source again and checks it is the same data; the windows come from the recorded
    documents and offsets, not from the seed.
    """
    import torch

    source = resolve_text_source(described.get("source", ""))
    recorded = {k: described.get(k) for k in source.identity()}
    if source.identity() != recorded:
        raise GispError(
            f"calibration source {source.name!r} is not the data the trajectory recorded "
            f"({recorded}): the calibration cannot be rebuilt from it"
        )
    n, seq_len = int(described["num_samples"]), int(described["seq_len"])
    bos = described.get("bos", "stream")  # recorded since the setting exists; before it, always stream
    if described.get("sampling", "packed") == "packed":
        return build_calibration(tokenizer, source, n, seq_len, int(described["seed"]), bos=bos).input_ids
    text_len = seq_len - 1 if bos == "each" else seq_len
    tokens = _Tokens(tokenizer, load_documents(source))
    starts = described["window_starts"]
    if described["mode"] == "documents":
        rows = [tokens(i)[s : s + text_len] for i, s in zip(described["window_documents"], starts)]
    else:
        stream, _ = _stream(tokens, tokenizer(SEPARATOR, add_special_tokens=False)["input_ids"])
        rows = [stream[s : s + text_len] for s in starts]
    if len(rows) != n or any(len(r) != text_len for r in rows):
        raise GispError("the recorded calibration windows do not fit the source: it cannot be rebuilt")
    ids = torch.tensor(rows, dtype=torch.long)
    return with_bos(ids, bos_token_id(tokenizer)) if bos == "each" else ids


# ---- WikiText-2 ------------------------------------------------------------------------------
WIKITEXT2_LOCAL = "wikitext2/wiki.test.raw"


def wikitext2_test_text() -> tuple[str, dict]:
    """The WikiText-2 test split as one evaluation string (rows joined with a blank line)."""
    root = settings.data_dir()
    path = root / WIKITEXT2_LOCAL if root is not None else None
    if path is not None and path.is_file():
        # each line is a non-empty row of the hub split (CRLF ends); a row is the line plus "\n"
        raw = path.read_bytes().decode("utf-8")
        rows = [line + "\n" for line in raw.split("\r\n") if line]
        if not rows:
            raise GispError(f"{path} holds no text")
        return "\n\n".join(rows), {"source": "file", "file": WIKITEXT2_LOCAL, "sha256": file_sha256(path)}
    _hub_allowed("WikiText-2")
    import datasets

    try:
        ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
    except Exception as exc:
        raise GispError(f"could not load WikiText-2 from the hub: {str(exc).splitlines()[0]}") from None
    return "\n\n".join(ds["text"]), {"source": "hub", "dataset": "wikitext/wikitext-2-raw-v1", "split": "test"}
