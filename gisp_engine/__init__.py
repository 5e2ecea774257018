"""GISP engine: Global Iterative Structured Pruning of Hugging Face causal LMs.

The library behind the ``gisp`` CLI and the Streamlit explorer (it never imports Streamlit).

    from gisp_engine import PruneConfig, prune, load_model, apply_step, wikitext2_perplexity
    outcome = prune(PruneConfig(steps=10, max_sparsity=0.5))
    traj = outcome.trajectory
    loaded = load_model("smollm2-135m")
    apply_step(loaded, traj, traj.step_at_sparsity(0.3))   # physically sliced, in place
    print(wikitext2_perplexity(loaded.model, loaded.tokenizer, limit=50).perplexity)
"""

from __future__ import annotations

import importlib
import importlib.util

from .settings import ENGINE_VERSION

__version__ = ENGINE_VERSION

# name -> module: imported on first use, so that ``import gisp_engine.config`` (validating a
# config, listing the methods) loads no torch
_EXPORTS = {
    "ExportResult": "export",
    "GispError": "errors",
    "LoadedModel": "models",
    "PrunedModel": "export",
    "PruneConfig": "config",
    "PruneOutcome": "pruner",
    "StepRecord": "trajectory",
    "StructureSpace": "structures",
    "Trajectory": "trajectory",
    "apply_step": "subnetwork",
    "check_compatible": "subnetwork",
    "export_subnetwork": "export",
    "load_model": "models",
    "load_pruned": "export",
    "plan": "pruner",
    "prepare_embedded_model": "models",
    "prune": "pruner",
    "rescore_along": "pruner",
    "resolve_step": "subnetwork",
    "wikitext2_perplexity": "evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        if importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return importlib.import_module(f".{name}", __name__)  # gisp_engine.export etc., as before
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
