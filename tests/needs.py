"""The one rule for what a test needs and may not find: it skips, except under ``GISP_REQUIRE_DATA=1``
(set by ``.ci/run``), where it fails. Every skip a test can reach goes through here (test_needs checks)."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def require(what: str) -> None:
    """Skip the test for want of ``what``, or fail it where everything must be there."""
    if os.environ.get("GISP_REQUIRE_DATA") == "1":
        pytest.fail(f"{what} is required here (GISP_REQUIRE_DATA=1)")
    pytest.skip(f"{what} is not available")


def import_or_require(module: str) -> ModuleType:
    """``pytest.importorskip`` under the same rule."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        require(f"the module {module} ({exc})")
