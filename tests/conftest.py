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

from gisp_engine import settings  # noqa: E402
from needs import require  # noqa: E402
from tiny import cache_dir, make_tiny_model  # noqa: E402

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
    from gisp_engine.errors import GispError
    from gisp_engine.models import prepare_embedded_model

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
