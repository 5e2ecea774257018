"""The code's form: ruff's lint and format checks pass (pinned in requirements-dev.txt, configured in
pyproject.toml), and test modules share helpers through conftest.py and helper modules, never by importing
another test module (which builds that module's fixtures twice and ties the two files together)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from needs import import_or_require

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def _ruff(*args: str) -> subprocess.CompletedProcess:
    import_or_require("ruff")
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_lint_passes():
    done = _ruff("check", "--no-cache", ".")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_ruff_format_passes():
    done = _ruff("format", "--check", "--no-cache", ".")
    assert done.returncode == 0, "not formatted (run `ruff format .`):\n" + done.stdout[-4000:]


def _imported_modules(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found


def test_no_test_module_imports_another():
    tests = {p.stem for p in TESTS.glob("test_*.py")}
    found = {p.name: sorted(_imported_modules(p.read_text()) & tests) for p in sorted(TESTS.glob("*.py"))}
    assert {name: mods for name, mods in found.items() if mods} == {}
    # the check sees what it is meant to
    assert _imported_modules("from test_app import open_page\nimport test_export as e\n") == {"test_app", "test_export"}


def test_the_remote_code_templates_are_left_as_written():
    """They are excluded from formatting: an export's copy is checked byte for byte against them."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "gisp_engine/export/remote_code" in config["tool"]["ruff"]["extend-exclude"]
