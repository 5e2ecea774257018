"""Who may change things: the app's mode, from the address it listens on, and messages fit for a browser.

On localhost the user is the machine's owner: everything works (``local``). Served to a network
(any address but a loopback one, or every address), the app is a ``viewer`` unless
``GISP_ALLOW_CHANGES=1`` (``shared``): it reads what the cache holds, and whatever starts work,
writes or deletes is refused here, in the engine, not only hidden in the page. The command line
and the Python API never set a mode: they run as ``local``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from . import settings
from .errors import GispError


@dataclass(frozen=True)
class Mode:
    name: str  # local | viewer | shared
    writes: bool  # whether work may be started and the cache written
    reason: str  # why, in words (the app's sidebar shows it)


LOCAL = Mode("local", True, "the command line and the Python API")


def is_local_address(address: str | None) -> bool:
    """A loopback address or ``localhost``; None or "" (Streamlit then listens on every address) is not."""
    host = (address or "").strip().strip("[]").lower()
    if host in {"localhost", "ip6-localhost"}:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def mode_for(address: str | None, allow_changes: bool | None = None) -> Mode:
    """The mode of an app listening on ``address`` (Streamlit's ``server.address``)."""
    where = f"listening on {address}" if address else "listening on every address"
    if is_local_address(address):
        return Mode("local", True, f"{where}: only this machine can reach it")
    if settings.allow_changes() if allow_changes is None else allow_changes:
        return Mode(
            "shared",
            True,
            f"{where} with GISP_ALLOW_CHANGES=1: anyone who can reach it may start runs and write to the cache",
        )
    return Mode(
        "viewer",
        False,
        f"{where}: anyone on the network can reach it, so nothing here starts work, "
        "writes or deletes (GISP_ALLOW_CHANGES=1 turns changes back on)",
    )


_current = LOCAL


def set_mode(mode: Mode) -> None:
    """The mode of this process (the app sets it on every page; it is the same for every session)."""
    global _current
    _current = mode


def current_mode() -> Mode:
    return _current


def require_changes(what: str) -> None:
    """Refuse ``what`` (starting work, writing, deleting) in a viewer."""
    if not _current.writes:
        raise GispError(f"{what} is refused: this app is a viewer ({_current.reason})")


# an absolute path: after a space, a quote or the start, never after a URL's "//" or a word
_PATH = re.compile(r"(?<![\w.:/~-])/[^\s'\"`:,;()\[\]{}<>]+")


def project_folders() -> list[Path]:
    """The folders a browser may see named: the project, its cache and its data folder."""
    roots = [settings.PROJECT_ROOT, settings.cache_dir(), settings.data_dir()]
    return [Path(r).resolve() for r in roots if r is not None]


def public_message(text: str) -> str:
    """``text`` with every absolute path outside the project's folders cut to its last part (``…/name``)."""
    roots = project_folders()

    def shorten(match: re.Match) -> str:
        path = Path(match.group(0))
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError):
            resolved = path
        if any(resolved == r or resolved.is_relative_to(r) for r in roots):
            return match.group(0)
        return f"…/{path.name}" if path.name else "…"

    return _PATH.sub(shorten, text)


# ---- what a browser may download ------------------------------------------------------------------
def exports_dir() -> Path:
    """Where the app writes exports (a browser never names the folder)."""
    return settings.cache_dir() / "exports"


def export_archive(folder: str | Path) -> Path:
    """A zip of an export folder under ``exports_dir()``, beside it (``NAME.zip``, unpacking to ``NAME/``).

    Written once per export (rewritten when the folder is newer); stored, not compressed: the weights hardly
    compress and the archive is written as fast as the disk allows.
    """
    import os
    import tempfile
    import zipfile

    from .fsutil import TMP_MARK

    folder = Path(folder)
    root = exports_dir().resolve()
    if not folder.is_dir() or not folder.resolve().is_relative_to(root) or folder.resolve() == root:
        raise GispError(f"{folder.name!r:.80} is not an export folder of the cache: nothing to download")
    folder = folder.resolve()
    target = folder.with_name(folder.name + ".zip")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    newest = max((p.stat().st_mtime for p in files), default=0.0)
    if target.is_file() and target.stat().st_mtime >= newest:
        return target
    fd, tmp = tempfile.mkstemp(dir=folder.parent, prefix=TMP_MARK + target.name + ".")
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for path in files:
                zf.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def downloadable(path: str | Path) -> Path:
    """``path`` when it is a file under ``exports_dir()`` (no link leading out of it), else refused."""
    candidate = Path(path)
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        resolved = None
    if resolved is None or not resolved.is_file() or not resolved.is_relative_to(exports_dir().resolve()):
        raise GispError(f"{candidate.name!r:.80} is not a file of the cache's exports: nothing to download")
    return resolved
