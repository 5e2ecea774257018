"""One way to register an extension: one module per extension, in the package of its kind.

A registry lists the public modules of its package by file name (``wanda_sp.py`` is ``wanda-sp``; a name starting
with ``_`` is the package's own), without importing them, and imports one on first use, where it reads the module's
``attribute``. Adding a pruning method, an objective or a model family is adding one file:

=============  ======================================  ==================================================
kind           package                                 the module defines
=============  ======================================  ==================================================
method         ``gisp_engine/pruning/methods/``        ``METHOD``: a ``methods.Method``
objective      ``gisp_engine/pruning/objectives/``     ``OBJECTIVE``: an ``objectives.ObjectiveSpec``
model family   ``gisp_engine/model/adapters/``         ``ADAPTER``: a ``adapters.DecoderAdapter`` subclass
=============  ======================================  ==================================================

(The checks a sweep can run are data, not code: WikiText-2, the tasks ``evaluate`` names and custom task files;
``checks.available_checks`` lists them.)
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from typing import Any

from .errors import GispError


class Registry:
    """The extensions of one kind: the public modules of ``package``, each defining ``attribute``."""

    def __init__(self, kind: str, package: str, attribute: str, first: str | None = None):
        self.kind, self.package, self.attribute, self.first = kind, package, attribute, first
        self._names: tuple[str, ...] | None = None

    def names(self) -> tuple[str, ...]:
        """Every extension's name, ``first`` first, then in alphabetical order (no module imported)."""
        if self._names is None:
            spec = importlib.util.find_spec(self.package)
            found = pkgutil.iter_modules(list(spec.submodule_search_locations or []))
            names = {m.name.replace("_", "-") for m in found if not m.name.startswith("_")}
            self._names = tuple(sorted(names, key=lambda n: (n != self.first, n)))
        return self._names

    def get(self, name: str) -> Any:
        """The extension called ``name`` (its module imported on first use); an unknown name is a GispError."""
        if name not in self.names():
            raise GispError(f"unknown {self.kind} {name!r}: choose one of {', '.join(self.names())}")
        value = getattr(importlib.import_module(f"{self.package}.{name.replace('-', '_')}"), self.attribute)
        own = getattr(value, "name", None)
        if isinstance(own, str) and own != name:
            raise RuntimeError(f"{self.package}.{name}: its {self.attribute} is called {own!r}")
        return value

    def all(self) -> dict[str, Any]:
        return {name: self.get(name) for name in self.names()}


METHODS = Registry("method", "gisp_engine.pruning.methods", "METHOD", first="gisp")
OBJECTIVES = Registry("objective", "gisp_engine.pruning.objectives", "OBJECTIVE", first="perplexity")
ADAPTERS = Registry("model family", "gisp_engine.model.adapters", "ADAPTER", first="llama")
