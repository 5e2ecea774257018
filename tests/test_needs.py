"""No skip where CI must fail: every skip a test can reach obeys GISP_REQUIRE_DATA=1; the engine hides no
ImportError."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import gisp_engine.evaluation
from gisp_engine.evaluation import checks, evaluate

TESTS = Path(__file__).resolve().parent
SKIPS = {"skip", "importorskip", "skipif", "xfail"}


def _unruled_skips(source: str) -> list[int]:
    """Lines that skip (pytest.skip/importorskip, skip marks) outside a function that fails under the rule."""
    tree = ast.parse(source)
    ruled: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef):
            text = ast.get_source_segment(source, fn) or ""
            if "GISP_REQUIRE_DATA" in text and "pytest.fail(" in text:
                ruled.update(range(fn.lineno, (fn.end_lineno or fn.lineno) + 1))
    return sorted(
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr in SKIPS
        and node.lineno not in ruled
        and ast.unparse(node.value) in ("pytest", "pytest.mark")
    )


def test_every_reachable_skip_fails_under_gisp_require_data():
    found = {path.name: lines for path in sorted(TESTS.glob("*.py")) if (lines := _unruled_skips(path.read_text()))}
    assert found == {}, f"skips that CI would pass over (use needs.require / needs.import_or_require): {found}"


def test_the_scan_sees_each_kind_of_skip():
    assert _unruled_skips("import pytest\ndef test():\n    pytest.skip('x')\n") == [3]
    assert _unruled_skips("import pytest\ndef test():\n    pytest.importorskip('x')\n") == [3]
    assert _unruled_skips("import pytest\n@pytest.mark.skipif(True, reason='x')\ndef test():\n    pass\n") == [2]
    assert _unruled_skips((TESTS / "needs.py").read_text()) == []


def test_available_checks_offer_every_task_of_the_engine():
    offered = checks.available_checks()
    assert set(evaluate.TASKS) <= set(offered) and {"boolq", "arc_easy", "wikitext2"} <= set(offered)
    assert all(offered[t].metric == "accuracy" for t in evaluate.TASKS if t != "wikitext2")


def test_available_checks_do_not_hide_a_broken_evaluation_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "gisp_engine.evaluation.evaluate", None)  # as if it failed to import
    monkeypatch.delattr(gisp_engine.evaluation, "evaluate", raising=False)
    with pytest.raises(ImportError):
        checks.available_checks()
