"""The engine's import contracts (pyproject.toml, ``[tool.importlinter]``) hold, and each one can fail.

``lint-imports`` checks: the subpackages as layers (docs/ARCHITECTURE.md), the layers inside each subpackage, no
Streamlit in the engine, no cycles between its modules. Each contract is then broken on purpose in a copy of the
package, to show that it catches what it is meant to catch.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"
PACKAGE = ROOT / "gisp_engine"
SUBPACKAGES = ("core", "model", "data", "pruning", "evaluation", "explore", "export", "choose", "jobs")


def contracts(root: Path = ROOT) -> dict[str, str]:
    """id -> name of every contract in ``root``'s pyproject.toml."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    return {c["id"]: c["name"] for c in config["tool"]["importlinter"]["contracts"]}


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


def verdicts(output: str, root: Path = ROOT) -> dict[str, str]:
    flat = " ".join(output.split())
    out = {}
    for contract, name in contracts(root).items():
        for verdict in ("KEPT", "BROKEN"):
            if f"{' '.join(name.split())} {verdict}" in flat:
                out[contract] = verdict
    return out


def copy_project(root: Path) -> None:
    """The contracts and the package, copied into ``root`` to be broken there."""
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    shutil.copytree(PACKAGE, root / "gisp_engine", ignore=shutil.ignore_patterns("__pycache__"))


def test_the_engine_keeps_every_contract():
    output = lint(ROOT)
    assert set(contracts()) == {"layers", *SUBPACKAGES, "no-streamlit", "no-cycles"}
    assert verdicts(output) == {c: "KEPT" for c in contracts()}, output


def test_every_subpackage_is_a_layer_and_says_what_it_may_import():
    """The folders are the layers: every subpackage is in the layers contract and has its own contract, and its
    ``__init__`` holds a docstring that says what it owns and which layers it may import, and no code."""
    on_disk = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert on_disk == set(SUBPACKAGES)
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    layers = next(c for c in config["tool"]["importlinter"]["contracts"] if c["id"] == "layers")["layers"]
    named = {name.strip() for layer in layers for name in layer.split("|")}
    assert named == set(SUBPACKAGES) | {"cli"}
    for name in SUBPACKAGES:
        tree = ast.parse((PACKAGE / name / "__init__.py").read_text())
        doc = ast.get_docstring(tree)
        assert doc and ("May import" in doc or "Imports nothing else" in doc), name
        assert len(tree.body) == 1, f"{name}/__init__.py holds code: import its modules by their own path"


@pytest.mark.parametrize(
    "broken, module, bad_import",
    [
        # a lower subpackage reaching up (no cycle: export never imports explore)
        ({"layers"}, "explore/view.py", "from ..export import remote_code"),
        # inside one subpackage: the trajectory (bottom of pruning) reaching up; distributed imports no pruning module
        ({"pruning"}, "pruning/trajectory.py", "from . import distributed"),
        ({"evaluation"}, "evaluation/zeroshot.py", "from . import cost"),  # two modules of one layer ("|")
        ({"no-streamlit"}, "explore/figures.py", "import streamlit"),
        # a cycle where no layer is drawn: between two methods' modules (gisp imports _base)
        ({"no-cycles"}, "pruning/methods/_base.py", "from . import gisp"),
        # a cycle across layers breaks both
        ({"data", "no-cycles"}, "data/text.py", "from . import tasks"),
    ],
)
def test_each_contract_fails_on_a_bad_import(tmp_path, broken, module, bad_import):
    copy_project(tmp_path)
    target = tmp_path / "gisp_engine" / module
    lines = target.read_text().splitlines()
    at = next(
        i
        for i, line in enumerate(lines)
        if line.startswith(("import ", "from ")) and not line.startswith("from __future__")
    )
    target.write_text("\n".join(lines[:at] + [bad_import + "  # noqa"] + lines[at:]) + "\n")
    result = verdicts(lint(tmp_path), tmp_path)
    assert set(result) == set(contracts()), result
    assert {c for c, v in result.items() if v == "BROKEN"} == broken, result


def test_a_new_module_must_be_given_its_layer(tmp_path):
    """The contracts are exhaustive: a module that no layer names breaks its subpackage's contract."""
    copy_project(tmp_path)
    (tmp_path / "gisp_engine" / "pruning" / "shortcut.py").write_text('"""Nowhere in the contracts."""\n')
    result = verdicts(lint(tmp_path), tmp_path)
    assert result["pruning"] == "BROKEN", result
    assert all(v == "KEPT" for c, v in result.items() if c != "pruning"), result


def test_validating_a_config_loads_no_torch():
    """``gisp_engine`` imports its parts on first use: the method list and config validation need no torch."""
    code = (
        "import sys; from gisp_engine.pruning.config import METHODS, PruneConfig; "
        "PruneConfig(method='flap').validate(); import gisp_engine; assert gisp_engine.__version__; "
        "print(METHODS, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "False", done.stdout
    assert "'gisp'" in done.stdout and "'wanda-sp'" in done.stdout
    import gisp_engine

    assert gisp_engine.prune.__module__ == "gisp_engine.pruning.pruner" and "prune" in dir(gisp_engine)
    import gisp_engine.export.load

    assert gisp_engine.load_pruned is gisp_engine.export.load.load_pruned  # a subpackage answers as an attribute
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gisp_engine.nope  # noqa: B018


def test_the_loop_never_names_a_method():
    """The pruning loop asks a method for scores and a selection; it never branches on a method's name."""
    from gisp_engine.pruning.config import METHODS

    source = (PACKAGE / "pruning" / "pruner.py").read_text()
    assert len(METHODS) >= 7
    for name in METHODS:
        assert f'"{name}"' not in source and f"'{name}'" not in source, name


def test_the_map_names_every_module_in_its_subpackage():
    """docs/ARCHITECTURE.md has a section per subpackage that names each of its modules and subfolders."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    sections = dict(re.findall(r"^### `(\w+)/`[^\n]*\n(.*?)(?=^### |^## )", text, re.M | re.S))
    assert set(sections) == set(SUBPACKAGES)
    for name in SUBPACKAGES:
        folder = PACKAGE / name
        parts = [p.name for p in folder.glob("*.py") if not p.name.startswith("_")]
        parts += [f"{p.name}/" for p in folder.iterdir() if (p / "__init__.py").is_file()]
        missing = [part for part in parts if f"`{part}`" not in sections[name]]
        assert not missing, f"{name}/: {missing} not in docs/ARCHITECTURE.md"


def test_the_readme_imports_what_the_package_offers():
    """Every ``from gisp_engine... import`` in the README's Python imports, and its list of the public API is
    ``gisp_engine.__all__``."""
    import importlib

    import gisp_engine

    text = (ROOT / "README.md").read_text()
    found = re.findall(r"^from (gisp_engine[\w.]*) import ([\w, ]+)$", text, re.M)
    assert len(found) >= 3
    for module, names in found:
        imported = importlib.import_module(module)
        for name in names.split(","):
            assert hasattr(imported, name.strip()), f"{module}.{name.strip()}"
    listed = re.search(r"comes from `gisp_engine` itself \(`gisp_engine.__all__`.*?\): (.*?)\. The rest", text, re.S)
    assert listed, "the README's list of the public API"
    assert set(re.findall(r"`(\w+)`", listed.group(1))) == set(gisp_engine.__all__)
