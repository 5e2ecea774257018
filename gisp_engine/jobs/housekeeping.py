"""Cleaning the cache: remove one trajectory with everything about it, or prune finished jobs and old entries
(trajectories, uploads, exports).

``gisp cache rm KEY`` and ``gisp cache prune [--jobs] [--older-than DAYS] [--dry-run]`` call
:func:`remove_trajectory`, :func:`plan_cleanup` and :func:`apply_cleanup`; the Home page shows
what a cleanup would free. Nothing that is in use is removed: a trajectory is removed under its
lock, a job that is still running is never pruned, and the embedded models are never touched.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core import settings
from ..core.errors import GispError
from ..core.fsutil import TMP_MARK
from ..pruning import cache
from . import background as jobs

STALE_TMP_S = 24 * 3600  # an unfinished write older than this was left by a process that died


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass
class Cleanup:
    """What a cleanup removes: (path, why) pairs and the bytes they hold."""

    items: list[tuple[Path, str]] = field(default_factory=list)
    bytes: int = 0

    def add(self, path: Path, why: str) -> None:
        if path.exists():
            self.items.append((path, why))
            self.bytes += _size(path)

    def to_dict(self) -> dict:
        return {"bytes": self.bytes, "items": [{"path": str(p), "why": w} for p, w in self.items]}


def _trajectory_files(key: str) -> list[Path]:
    """A trajectory's folder, its checkpoint, its remembered evaluations and its lock files."""
    root = cache.trajectories_dir()
    evals = settings.cache_dir() / "evals"
    return [
        cache.path_for(key),
        cache.partial_path(key),
        evals / f"{key}.json",
        evals / f"{key}.lock",
        root / f".{key}.lock",
        root / f".{key}.lock.holder",
    ]


def remove_trajectory(key: str) -> Cleanup:
    """Remove the cached trajectory ``key`` (folder, checkpoint, evaluations); refuse while it is being computed."""
    if not cache.path_for(key).exists() and not cache.partial_path(key).exists():
        raise GispError(
            f"no trajectory {key!r} in the cache ({cache.trajectories_dir()}); `gisp cache list` shows them"
        )
    running = jobs.status(key)
    if running is not None and running.active:
        raise GispError(f"trajectory {key} is being computed by a background run: cancel it first")
    plan = Cleanup()
    with cache.locked(key):
        for path in _trajectory_files(key)[:4]:
            plan.add(path, f"trajectory {key}")
        _delete(plan)
    return plan


def plan_cleanup(finished_jobs: bool = True, older_than_days: float | None = None, now: float | None = None) -> Cleanup:
    """What ``gisp cache prune`` would remove: finished jobs; trajectories, uploads and exports older than a number of
    days (uploads not while a job runs); unfinished writes older than a day."""
    if older_than_days is not None and older_than_days < 0:
        raise GispError(f"--older-than must be a number of days >= 0, got {older_than_days:g}")
    now = time.time() if now is None else now
    cutoff = None if older_than_days is None else now - older_than_days * 86400
    plan = Cleanup()
    all_jobs = jobs.list_jobs() if finished_jobs or cutoff is not None else []
    if finished_jobs:
        for job in all_jobs:
            if job.active:
                continue
            if cutoff is None or (job.started_unix or job.updated_unix or 0) < cutoff:
                plan.add(jobs.job_dir(job.key), f"finished job ({job.state})")
    if cutoff is not None:
        for row in cache.list_cached():
            if _created_unix(row.get("created"), Path(row["path"])) < cutoff:
                for path in _trajectory_files(row["key"])[:3]:
                    plan.add(path, f"trajectory created {row.get('created')}")
        # what browsers handed in and took out (viewer mode): uploads are read when a run starts, so none goes
        # while a job is running
        running = any(job.active for job in all_jobs)
        for path, what in _uploads_and_exports(skip_uploads=running):
            modified = path.stat().st_mtime
            if not path.name.startswith(TMP_MARK) and modified < cutoff:
                plan.add(path, f"{what} from {_dt.datetime.fromtimestamp(modified):%Y-%m-%d}")
    for root in (cache.trajectories_dir(), jobs.jobs_dir(), settings.cache_dir() / "exports"):
        if root.is_dir():
            for path in root.iterdir():
                if path.name.startswith(TMP_MARK) and now - path.stat().st_mtime > STALE_TMP_S:
                    plan.add(path, "unfinished write left by a process that stopped")
    return plan


def _uploads_and_exports(skip_uploads: bool) -> list[tuple[Path, str]]:
    """Every upload (``uploads/<kind>/<hash>``) and export (``exports/<name>``, a zip beside it) in the cache."""
    found = []
    uploads = settings.cache_dir() / "uploads"
    if uploads.is_dir() and not skip_uploads:
        found += [
            (entry, f"{kind.name} upload")
            for kind in sorted(uploads.iterdir())
            if kind.is_dir()
            for entry in sorted(kind.iterdir())
        ]
    exports = settings.cache_dir() / "exports"
    if exports.is_dir():
        found += [(entry, "export") for entry in sorted(exports.iterdir())]
    return found


def apply_cleanup(plan: Cleanup) -> Cleanup:
    """Remove what ``plan`` lists (a job that started again since is left alone)."""
    _delete(plan)
    return plan


def _delete(plan: Cleanup) -> None:
    for path, _ in plan.items:
        if path.parent == jobs.jobs_dir():
            current = jobs.status(path.name)
            if current is not None and current.active:
                continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _created_unix(iso: str | None, folder: Path) -> float:
    try:
        return _dt.datetime.fromisoformat(iso).timestamp() if iso else folder.stat().st_mtime
    except (ValueError, OSError):
        return folder.stat().st_mtime


def human_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
