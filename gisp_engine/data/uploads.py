"""Files a browser may hand the engine: the data folder's files picked from a list, and uploads.

A browser never names a server path. Custom task files and calibration text are either files of
the data folder (``tasks/*.jsonl``, ``calib/*.jsonl|txt``), offered in a list, or uploads, checked
by the engine's own loaders (a bad record is refused with its line number) and stored in the
cache under their content hash: ``cache/uploads/<kind>/<sha256[:16]>/<name>``. Whatever is picked
is checked again on use: a file outside those folders, a symlink leading out of them, a name with
a path in it, is refused. The command line keeps its paths: there the user owns the machine.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..core import serving, settings
from ..core.errors import GispError
from ..core.fsutil import TMP_MARK, ensure_writable_dir

#: kind -> (the data folder's subfolder, the suffixes accepted)
KINDS = {"tasks": ("tasks", (".jsonl",)), "calib": ("calib", (".jsonl", ".txt"))}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]*")


@dataclass(frozen=True)
class Pick:
    """A file the app may use: where it is (server side) and what the browser is shown."""

    path: str
    label: str


def uploads_dir(kind: str) -> Path:
    _kind(kind)
    return settings.cache_dir() / "uploads" / kind


def _kind(kind: str) -> tuple[str, tuple[str, ...]]:
    if kind not in KINDS:
        raise GispError(f"unknown kind of file {kind!r}: one of {', '.join(KINDS)}")
    return KINDS[kind]


def safe_name(name: str, kind: str) -> str:
    """An upload's file name, as it will be stored; any path in it (``..``, ``/``, a drive) is refused."""
    _, suffixes = _kind(kind)
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or "\0" in name:
        raise GispError(f"{name!r:.80} is not a file name: give the file's name alone, without a folder")
    if not _NAME.fullmatch(name) or name in {".", ".."}:
        raise GispError(
            f"{name!r:.80} is not a usable file name: letters, digits, '.', '_', '-' and spaces, not starting with '.'"
        )
    if not name.lower().endswith(suffixes):
        raise GispError(f"{name}: a {kind} file ends in {' or '.join(suffixes)}")
    return name


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path``, every symlink followed, lies in ``root``."""
    try:
        return path.resolve(strict=True).is_relative_to(root.resolve())
    except (OSError, RuntimeError):
        return False


def data_files(kind: str) -> list[Pick]:
    """The data folder's files of ``kind``, by their name in the folder (none outside it, through a link or not)."""
    sub, suffixes = _kind(kind)
    root = settings.data_dir()
    folder = root / sub if root is not None else None
    if folder is None or not folder.is_dir():
        return []
    return [
        Pick(str(p.resolve()), f"data folder: {sub}/{p.name}")
        for p in sorted(folder.iterdir())
        if p.suffix.lower() in suffixes and p.is_file() and _inside(p, folder)
    ]


def uploaded_files(kind: str) -> list[Pick]:
    """Files uploaded earlier (any session), by name and the start of their content hash."""
    root = uploads_dir(kind)
    if not root.is_dir():
        return []
    picks = []
    for folder in sorted(root.iterdir(), key=lambda f: f.stat().st_mtime, reverse=True):
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        for p in folder.iterdir():
            if p.is_file() and _inside(p, root):
                picks.append(Pick(str(p.resolve()), f"uploaded: {p.name} ({folder.name[:8]})"))
    return picks


def choices(kind: str) -> list[Pick]:
    return data_files(kind) + uploaded_files(kind)


def checked_pick(path: str, kind: str) -> str:
    """``path`` when it is one of the files this kind may use (the data folder's, or an upload), else refused."""
    sub, _ = _kind(kind)
    roots = [uploads_dir(kind)] + ([settings.data_dir() / sub] if settings.data_dir() is not None else [])
    candidate = Path(path)
    if not candidate.is_absolute() or not any(_inside(candidate, r) for r in roots) or not candidate.is_file():
        raise GispError(
            f"{candidate.name or path!r:.80} is not a file of the data folder or an upload: pick one "
            "from the list, or upload it"
        )
    return str(candidate.resolve())


def max_upload_bytes() -> int:
    return int(settings.max_upload_mb() * 2**20)


def store_upload(name: str, content: bytes, kind: str) -> str:
    """Check an upload with the engine's loader of its kind, then keep it under its content hash; its path.

    Refused: a name with a path in it, more than ``GISP_MAX_UPLOAD_MB``, a file the loader refuses (the
    message names the upload and its line, never a server folder).
    """
    serving.require_changes("uploading a file")
    name = safe_name(name, kind)
    limit = max_upload_bytes()
    if len(content) > limit:
        raise GispError(
            f"{name} is {len(content) / 2**20:.1f} MiB: an upload may be at most "
            f"{limit / 2**20:.0f} MiB (GISP_MAX_UPLOAD_MB)"
        )
    final = uploads_dir(kind) / hashlib.sha256(content).hexdigest()[:16] / name
    if final.is_file():
        return str(final.resolve())
    with tempfile.TemporaryDirectory(dir=ensure_writable_dir(uploads_dir(kind)), prefix=TMP_MARK) as tmp:
        staged = Path(tmp) / name
        staged.write_bytes(content)
        try:
            _validate(staged, kind)
        except GispError as exc:  # name the upload, not the folder it was checked in
            raise GispError(str(exc).replace(str(staged.resolve()), name).replace(str(staged), name)) from None
        final.parent.mkdir(exist_ok=True)
        os.replace(staged, final)  # whole or not at all
    return str(final.resolve())


def _validate(path: Path, kind: str) -> None:
    if kind == "tasks":
        from .tasks import load_task

        load_task(str(path))
    else:
        from .text import TextSource, load_documents

        load_documents(TextSource("file", path.name, path=str(path)))


def typed_tasks(text: str) -> list[str]:
    """Built-in task names typed in a browser (comma-separated); a file name or path is refused."""
    names = [t.strip() for t in (text or "").split(",") if t.strip()]
    for name in names:
        if "/" in name or "\\" in name or name.lower().endswith(".jsonl") or name.startswith((".", "~")):
            raise GispError(
                f"{name!r:.80}: a task file is picked from the list or uploaded, not typed; "
                "type only built-in task names here"
            )
    return names


def typed_model(text: str) -> str:
    """A model named in a browser served to a network: an embedded name or a hub id, never a server folder."""
    name = (text or "").strip()
    looks_like_path = name.startswith(("/", ".", "~", "\\")) or ".." in name.split("/")
    if looks_like_path or (name and Path(name).expanduser().exists()):
        raise GispError(
            f"{name!r:.80}: a model is named here ({settings.DEFAULT_MODEL}, or a hub id such as "
            "HuggingFaceTB/SmolLM2-135M), not given as a folder of the server"
        )
    return name
