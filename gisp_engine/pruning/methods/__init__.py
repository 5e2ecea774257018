"""Pruning methods, one module each: iterative GISP and the fixed-ranking baselines.

Every public module here (``gisp.py``, ``wanda_sp.py``, …) defines ``METHOD``, an instance of
``_base.Method``: its scores for the current model, whether it re-scores after every step,
and how a step selects (``_selection``). The loop (``pruner``) asks nothing else, so adding a
method means adding one file; ``registry.METHODS`` finds it by its file name.

| method | score of a structure | selection |
|---|---|---|
| ``gisp`` | Σ|W⊙ḡ| divided by its block's constant, recomputed at every step | global |
| ``gisp-oneshot`` | GISP's score on the dense model | global (every step equals ``--steps 1`` at that sparsity) |
| ``llm-pruner`` | first-order Taylor Σ|W⊙ḡ| (LLM-Pruner style) | within each layer, same ratio everywhere |
| ``magnitude`` | L2 norm of the structure's weights | within each layer, same ratio everywhere |
| ``random`` | seeded uniform random numbers | within each layer, same ratio everywhere |
| ``wanda-sp`` | Σ |W|·‖X‖ over the structure's ``o_proj``/``down_proj`` columns | within each layer, same ratio |
| ``flap`` | FLAP's WIFV, standardized per layer and block; a head is the mean of its columns | global, to a budget |
"""

from __future__ import annotations

from ...core import registry
from ..config import METHODS
from ._base import Method, Scores, Scoring
from ._selection import ALIGN_RULE, Cut, aligned_count, check_align


def get(name: str) -> Method:
    """The method called ``name`` (its module is imported on first use; ``registry.METHODS``)."""
    return registry.METHODS.get(name)


__all__ = ["ALIGN_RULE", "Cut", "METHODS", "Method", "Scores", "Scoring", "aligned_count", "check_align", "get"]
