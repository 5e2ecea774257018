"""One way to register an extension (``gisp_engine.core.registry``): a module per extension, found by its file name."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gisp_engine.core import registry
from gisp_engine.core.errors import GispError
from gisp_engine.core.registry import Registry

PACKAGE = Path(__file__).resolve().parents[1] / "gisp_engine"


def test_a_new_file_is_a_new_extension(tmp_path, monkeypatch):
    pkg = tmp_path / "plugins_for_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "_shared.py").write_text("THING = 'not an extension'\n")
    (pkg / "alpha.py").write_text("class T:\n    name = 'alpha'\nTHING = T()\n")
    (pkg / "beta_gamma.py").write_text("THING = 'beta'\n")
    (pkg / "misnamed.py").write_text("class T:\n    name = 'other'\nTHING = T()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    things = Registry("thing", "plugins_for_test", "THING", first="beta-gamma")
    assert things.names() == ("beta-gamma", "alpha", "misnamed")  # no module imported to list them
    assert "plugins_for_test.alpha" not in sys.modules
    assert things.get("alpha").name == "alpha" and things.get("beta-gamma") == "beta"
    with pytest.raises(GispError, match="unknown thing 'gamma': choose one of beta-gamma, alpha, misnamed"):
        things.get("gamma")
    with pytest.raises(RuntimeError, match="is called 'other'"):
        things.get("misnamed")


@pytest.mark.parametrize(
    ("reg", "folder", "first"),
    [
        (registry.METHODS, "pruning/methods", "gisp"),
        (registry.OBJECTIVES, "pruning/objectives", "perplexity"),
        (registry.ADAPTERS, "model/adapters", "llama"),
    ],
)
def test_every_kind_is_one_file_per_extension(reg, folder, first):
    files = {p.stem.replace("_", "-") for p in (PACKAGE / folder).glob("*.py") if not p.stem.startswith("_")}
    assert set(reg.names()) == files and reg.names()[0] == first
    found = reg.all()
    assert len(found) == len(files) and all(value is not None for value in found.values())


def test_the_places_that_list_extensions_read_the_registries():
    from gisp_engine.model.adapters import ADAPTERS, SUPPORTED_MODEL_TYPES
    from gisp_engine.pruning.config import METHODS
    from gisp_engine.pruning.objectives import OBJECTIVES, objective_spec

    assert METHODS == registry.METHODS.names() and OBJECTIVES == registry.OBJECTIVES.names()
    assert {a.family for a in ADAPTERS} == set(registry.ADAPTERS.names())
    assert {"llama", "gemma3_text"} <= set(SUPPORTED_MODEL_TYPES)
    assert objective_spec("margin").name == "margin"
