"""The engine's import contracts (pyproject.toml, ``[tool.importlinter]``) hold, and each one can fail.

``lint-imports`` checks: the layers of docs/ARCHITECTURE.md, no Streamlit in the engine, no cycles
between its modules. Each contract is then broken on purpose in a copy of the package, to show
that it catches what it is meant to catch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"
CONTRACTS = {
    "layers": "data, trajectory, slicing, models",
    "no-streamlit": "The engine never imports Streamlit",
    "no-cycles": "No import cycles between the engine's modules",
}


def lint(root: Path) -> str:
    if not LINT.is_file():
        pytest.fail(f"import-linter is not installed ({LINT}): pip install -r requirements-dev.txt")
    env = dict(os.environ, PYTHONPATH=str(root))
    done = subprocess.run(
        [str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.stdout + done.stderr


def verdicts(output: str) -> dict[str, str]:
    flat = " ".join(output.split())
    out = {}
    for contract, words in CONTRACTS.items():
        for verdict in ("KEPT", "BROKEN"):
            if f"{words} {verdict}" in flat:
                out[contract] = verdict
    return out


def test_the_engine_keeps_every_contract():
    output = lint(ROOT)
    assert verdicts(output) == {c: "KEPT" for c in CONTRACTS}, output


@pytest.mark.parametrize(
    "contract, module, bad_import",
    [
        (
            "layers",
            "nll.py",
            "from . import remote_code",
        ),  # a lower layer reaching up (no cycle: remote_code imports nothing)
        ("no-streamlit", "figures.py", "import streamlit"),
        ("no-cycles", "data.py", "from . import tasks"),  # tasks imports data; both in one layer
    ],
)
def test_each_contract_fails_on_a_bad_import(tmp_path, contract, module, bad_import):
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "gisp_engine", tmp_path / "gisp_engine", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "gisp_engine" / module
    lines = target.read_text().splitlines()
    at = next(
        i
        for i, line in enumerate(lines)
        if line.startswith(("import ", "from ")) and not line.startswith("from __future__")
    )
    target.write_text("\n".join(lines[:at] + [bad_import + "  # noqa"] + lines[at:]) + "\n")
    result = verdicts(lint(tmp_path))
    assert result[contract] == "BROKEN", result
    assert all(v == "KEPT" for c, v in result.items() if c != contract), result


def test_validating_a_config_loads_no_torch():
    """``gisp_engine`` imports its parts on first use: the method list and config validation need no torch."""
    code = (
        "import sys; from gisp_engine.config import METHODS, PruneConfig; PruneConfig(method='flap').validate(); "
        "import gisp_engine; assert gisp_engine.__version__; print(METHODS, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "False", done.stdout
    assert "'gisp'" in done.stdout and "'wanda-sp'" in done.stdout
    import gisp_engine

    assert gisp_engine.prune.__module__ == "gisp_engine.pruner" and "prune" in dir(gisp_engine)
    assert gisp_engine.export.load_pruned is gisp_engine.export_load.load_pruned  # submodules answer as attributes
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gisp_engine.nope  # noqa: B018


def test_the_loop_never_names_a_method():
    """The pruning loop asks a method for scores and a selection; it never branches on a method's name."""
    from gisp_engine.config import METHODS

    source = (ROOT / "gisp_engine" / "pruner.py").read_text()
    assert len(METHODS) >= 7
    for name in METHODS:
        assert f'"{name}"' not in source and f"'{name}'" not in source, name
