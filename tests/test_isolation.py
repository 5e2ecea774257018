"""Tests leave no state behind and their random cases reproduce: checked over every test module."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _environ_writes(source: str) -> list[int]:
    """Lines that delete ``os.environ[...]`` or set a ``GISP_`` variable in it directly: a module fixture that
    does so loses the value set around it (the cache that conftest gave the whole session)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        for target in node.targets if isinstance(node, (ast.Assign, ast.Delete)) else []:
            if isinstance(target, ast.Subscript) and ast.unparse(target.value) == "os.environ":
                key = target.slice.value if isinstance(target.slice, ast.Constant) else ""
                if isinstance(node, ast.Delete) or str(key).startswith("GISP_"):
                    lines.append(target.lineno)
    return lines


def test_only_the_context_manager_and_conftest_touch_the_environment():
    """tiny.cache_dir saves and restores (module and session fixtures); monkeypatch.setenv, for a test."""
    found = {
        p.name: lines
        for p in sorted(TESTS.glob("*.py"))
        if p.name not in ("tiny.py", "conftest.py") and (lines := _environ_writes(p.read_text()))
    }
    assert found == {}, f"use tiny.cache_dir (module/session fixtures) or monkeypatch.setenv: {found}"


def test_the_scan_sees_a_bare_set_and_del():
    source = 'import os\nos.environ["GISP_CACHE_DIR"] = "x"\ndel os.environ["GISP_CACHE_DIR"]\nos.environ[k] = v\n'
    assert _environ_writes(source) == [2, 3]


def test_every_hypothesis_fuzzer_is_derandomized():
    """A failure found once is found again on the next run (and its blob printed), not lost to a new seed."""
    for path in sorted(TESTS.glob("*.py")):
        tree = ast.parse(path.read_text())
        if not any(isinstance(n, (ast.Import, ast.ImportFrom)) and "hypothesis" in ast.unparse(n) for n in tree.body):
            continue
        calls = [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and ast.unparse(n.func) in ("settings", "hypothesis.settings")
        ]
        assert calls, f"{path.name}: hypothesis without a settings object"
        for call in calls:
            keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
            assert keywords.get("derandomize") == "True", f"{path.name}:{call.lineno} is not derandomized"
