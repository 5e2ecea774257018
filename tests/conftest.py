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
from tiny import make_tiny_model  # noqa: E402

PROJECT_CACHE = settings.cache_dir()


def _require(what: str) -> None:
    if os.environ.get("GISP_REQUIRE_DATA") == "1":
        pytest.fail(f"{what} is required here (GISP_REQUIRE_DATA=1)")
    pytest.skip(f"{what} is not available")


@pytest.fixture(autouse=True)
def isolated_cache(request, tmp_path, monkeypatch):
    """Every test writes trajectories into its own cache; the embedded model is shared read-only."""
    if "embedded_model_dir" in request.fixturenames:
        request.getfixturevalue("embedded_model_dir")
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    real = PROJECT_CACHE / "models" / settings.DEFAULT_MODEL
    if real.is_dir():
        (cache / "models" / settings.DEFAULT_MODEL).symlink_to(real, target_is_directory=True)
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
            (f, g) for f in ("llama", "mistral", "qwen2", "qwen3") for g in (True, False)
        )
    }


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> Path:
    return tiny_models[("llama", True)]


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The embedded SmolLM2-135M, converted into the project cache once per machine."""
    from gisp_engine.errors import GispError
    from gisp_engine.models import prepare_embedded_model

    saved = os.environ.get("GISP_CACHE_DIR")
    os.environ["GISP_CACHE_DIR"] = str(PROJECT_CACHE)
    try:
        return prepare_embedded_model()
    except GispError as exc:
        _require(f"the embedded model ({exc})")
    finally:
        if saved is None:
            os.environ.pop("GISP_CACHE_DIR", None)
        else:
            os.environ["GISP_CACHE_DIR"] = saved
