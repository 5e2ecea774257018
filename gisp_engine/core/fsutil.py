"""Atomic writes and inter-process locks for everything written into the cache."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import GispError

TMP_MARK = ".tmp-"


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# read once, at import (one thread): setting it to read it again later would race with other threads' files
_UMASK = _read_umask()


def _umask() -> int:
    return _UMASK


def umask() -> int:
    """The process umask, as it was when the engine was imported."""
    return _UMASK


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=TMP_MARK, delete=True)
        probe.close()
    except OSError as exc:
        raise GispError(f"cannot write to {path} ({exc.strerror}): set GISP_CACHE_DIR to a writable folder") from None
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_MARK + path.name + ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; published files are shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode("utf-8"))


@contextlib.contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """A temporary folder beside ``final``; on success it replaces ``final`` in one rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=TMP_MARK + final.name + "."))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if final.exists():
            old = final.parent / f"{TMP_MARK}old-{final.name}.{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


LOCK_WAIT_NOTE_S = 2.0  # after this long, a waiting process says what it waits for


@contextlib.contextmanager
def file_lock(path: Path, what: str = "", timeout: float | None = None) -> Iterator[None]:
    """An exclusive lock held across processes (released if the holder dies), via ``filelock``.

    ``what`` names the thing protected (a trajectory, an evaluation file) for messages; a holder
    leaves its pid and ``what`` beside the lock. Past ``timeout`` seconds (None: wait as long as it
    takes) a :class:`GispError` says what was waited for and who holds it.
    """
    import sys
    import time

    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), mode=0o666 & ~_UMASK)
    holder = path.with_name(path.name + ".holder")
    name = what or str(path)
    try:
        lock.acquire(timeout=min(LOCK_WAIT_NOTE_S, timeout) if timeout is not None else LOCK_WAIT_NOTE_S)
    except Timeout:
        print(f"gisp: waiting for {name}, held by {_holder(holder)}", file=sys.stderr)
        started = time.monotonic()
        try:
            lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout - LOCK_WAIT_NOTE_S))
        except Timeout:
            raise GispError(
                f"gave up after {time.monotonic() - started + LOCK_WAIT_NOTE_S:.0f} s waiting for "
                f"{name} ({path}), held by {_holder(holder)}"
            ) from None
    try:
        with contextlib.suppress(OSError):
            holder.write_text(f"pid {os.getpid()} ({name}) since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        yield
    finally:
        with contextlib.suppress(OSError):
            holder.unlink()
        lock.release()


def _holder(holder: Path) -> str:
    try:
        return holder.read_text().strip() or "another process"
    except OSError:
        return "another process"
