"""The trajectory cache: a folder per request key under ``cache/trajectories``.

The key is a hash of everything that determines the result (model weights, calibration
data and its slice, every pruning setting). A folder appears only once it is complete
(staged, then renamed), so a partial run is never listed. A lock per key makes a second
process asking for the same trajectory wait and reuse it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from ..core import settings
from ..core.errors import GispError
from ..core.fsutil import TMP_MARK, ensure_writable_dir, file_lock
from .trajectory import META_FILE, Trajectory


def trajectories_dir() -> Path:
    return settings.cache_dir() / "trajectories"


def request_key(request: dict) -> str:
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def path_for(key: str) -> Path:
    return trajectories_dir() / key


def partial_path(key: str) -> Path:
    """Checkpoint of an unfinished run (hidden: never listed as a trajectory)."""
    return trajectories_dir() / f".partial-{key}"


def lookup(key: str) -> Trajectory | None:
    folder = path_for(key)
    if not (folder / META_FILE).is_file():
        return None
    try:
        return Trajectory.load(folder)
    except GispError:
        return None  # a damaged entry is recomputed (and replaced atomically)


@contextlib.contextmanager
def locked(key: str) -> Iterator[None]:
    root = ensure_writable_dir(trajectories_dir())
    # a second request for the same trajectory waits for the run that computes it (hours on a big model)
    with file_lock(root / f".{key}.lock", what=f"trajectory {key}", timeout=settings.lock_timeout_s()):
        yield


def resolve_trajectory(ref: str | Path) -> Trajectory:
    """A trajectory from a folder or a cache key (what every command's ``--trajectory`` accepts)."""
    path = Path(ref).expanduser()
    if path.exists():
        return Trajectory.load(path)
    if not any(sep in str(ref) for sep in "/\\") and path_for(str(ref)).exists():
        return Trajectory.load(path_for(str(ref)))
    raise GispError(f"trajectory {str(ref)!r} not found (give a folder or a cache key; `gisp cache list` shows them)")


def list_cached(root: Path | None = None) -> list[dict]:
    """Summaries of the complete, readable trajectories in the cache (newest first)."""
    root = root or trajectories_dir()
    out = []
    if not root.is_dir():
        return out
    for folder in sorted(root.iterdir()):
        if folder.name.startswith((TMP_MARK, ".")) or not (folder / META_FILE).is_file():
            continue
        try:
            meta = json.loads((folder / META_FILE).read_text())
            steps = meta["steps"]
            out.append(
                {
                    "key": folder.name,
                    "path": str(folder),
                    "model": meta["model"]["id"],
                    "objective": meta["objective"]["objective"],
                    "method": meta.get("method", "gisp"),
                    "steps": len(steps) - 1,
                    "max_structural_ratio": steps[-1]["structural_ratio"],
                    "max_param_sparsity": steps[-1]["param_sparsity"],
                    "created": meta.get("created"),
                    "size_bytes": sum(p.stat().st_size for p in folder.iterdir() if p.is_file()),
                }
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(out, key=lambda r: r.get("created") or "", reverse=True)
