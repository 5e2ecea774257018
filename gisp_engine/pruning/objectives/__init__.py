"""Pluggable objectives, one module each (``perplexity.py``, ``margin.py``, ``gsm8k.py``): each defines
``OBJECTIVE``, an ``ObjectiveSpec`` that says what identifies it (for the cache key) and how to build it;
``registry.OBJECTIVES`` finds it by its file name."""

from __future__ import annotations

from ...core import registry
from ...model.nll import input_device, sequence_nll
from ._base import Objective, ObjectiveSpec
from .gsm8k import GSM8KObjective
from .margin import MarginObjective
from .perplexity import PerplexityObjective

#: the objectives' names, perplexity first
OBJECTIVES: tuple[str, ...] = registry.OBJECTIVES.names()


def objective_spec(name: str) -> ObjectiveSpec:
    """The objective called ``name``; an unknown name is a GispError naming the others."""
    return registry.OBJECTIVES.get(name)


__all__ = [
    "GSM8KObjective",
    "MarginObjective",
    "OBJECTIVES",
    "Objective",
    "ObjectiveSpec",
    "PerplexityObjective",
    "input_device",
    "objective_spec",
    "sequence_nll",
]
