"""Shared fixtures: an isolated cache per test, tiny models of every family, the real model.

Tests that need the shared data (``$GISP_DATA_DIR``) or the embedded model skip when they
are absent, unless ``GISP_REQUIRE_DATA=1`` (set by ``.ci/run``), where they fail instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import transformers  # noqa: E402

transformers.utils.logging.disable_progress_bar()

from apptest import copy_into_cache  # noqa: E402
from needs import require  # noqa: E402
from tiny import cache_dir, make_tiny_model  # noqa: E402

from gisp_engine import PruneConfig, prune  # noqa: E402
from gisp_engine.core import settings  # noqa: E402
from gisp_engine.jobs import background as jobs  # noqa: E402

PROJECT_CACHE = settings.cache_dir()


_require = require


@pytest.fixture(autouse=True)
def isolated_cache(request, tmp_path, monkeypatch):
    """Every test writes trajectories into its own cache; the embedded model is shared read-only."""
    for fixture in ("embedded_model_dir", "embedded_gemma_dir"):
        if fixture in request.fixturenames:
            request.getfixturevalue(fixture)
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    for name in settings.EMBEDDED_MODELS:
        real = PROJECT_CACHE / "models" / name
        if real.is_dir():
            (cache / "models" / name).symlink_to(real, target_is_directory=True)
    monkeypatch.setenv("GISP_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = settings.data_dir()
    if root is None or not (root / "calib" / "lambada_openai.jsonl").is_file():
        _require("the shared data directory (GISP_DATA_DIR)")
    return root


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[tuple[str, bool], Path]:
    """(family, gqa) -> folder of a tiny random model, for every supported family."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        (family, gqa): make_tiny_model(root / f"{family}-{'gqa' if gqa else 'mha'}", family, gqa=gqa, seed=i)
        for i, (family, gqa) in enumerate(
            (f, g) for f in ("llama", "mistral", "qwen2", "qwen3", "gemma3") for g in (True, False)
        )
    }


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> Path:
    return tiny_models[("llama", True)]


def _prepared(name: str) -> Path:
    """An embedded model, converted into the project cache once per machine."""
    from gisp_engine.core.errors import GispError
    from gisp_engine.model.loading import prepare_embedded_model

    with cache_dir(PROJECT_CACHE):
        try:
            return prepare_embedded_model(name)
        except GispError as exc:
            _require(f"the embedded model {name} ({exc})")


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The embedded SmolLM2-135M (the default)."""
    return _prepared(settings.DEFAULT_MODEL)


@pytest.fixture(scope="session")
def embedded_gemma_dir() -> Path:
    """The embedded Gemma 3 270M (one KV head, head_dim 256, 262k vocabulary)."""
    return _prepared("gemma3-270m")


# ---- the explorer's tiny trajectories (AppTest and browser tests) -------------------------------------
@pytest.fixture(scope="session")
def tiny_runs(tiny_models, data_dir, tmp_path_factory) -> dict[str, Path]:
    """Three small trajectories for the explorer's tests: iterative and one-shot of one model, and one of another
    model (built once per session; ``runs`` gives each test its own copies)."""
    with cache_dir(tmp_path_factory.mktemp("app-cache")):
        base = dict(num_samples=4, seq_len=32, protect_first=1, dtype="float32", batch_size=4)
        llama, other = tiny_models[("llama", True)], tiny_models[("llama", False)]
        return {
            "iterative": prune(PruneConfig(model=str(llama), steps=4, max_sparsity=0.5, **base)).path,
            "oneshot": prune(PruneConfig(model=str(llama), steps=1, max_sparsity=0.5, **base)).path,
            "other": prune(PruneConfig(model=str(other), steps=2, max_sparsity=0.3, **base)).path,
        }


@pytest.fixture
def runs(tiny_runs, isolated_cache) -> dict[str, str]:
    """The tiny trajectories, copied into this test's own cache (so the app lists them)."""
    return copy_into_cache(tiny_runs, isolated_cache)


@pytest.fixture
def no_jobs_left():
    yield
    for job in jobs.list_jobs(active_only=True):
        jobs.cancel(job.key)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's), driven by Playwright: one per test module."""
    from browsing import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.is_file():
        _require(f"chromium ({CHROMIUM}; apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _require("the playwright package (pip install -r requirements-dev.txt)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
