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

from .core.settings import ENGINE_VERSION

__version__ = ENGINE_VERSION

# name -> module: imported on first use, so that ``import gisp_engine.pruning.config`` (validating a
# config, listing the methods) loads no torch
_EXPORTS = {
    "apply_step": "pruning.subnetwork",
    "check_compatible": "pruning.subnetwork",
    "compare_at": "choose.recommend",
    "Constraints": "choose.recommend",
    "export_elastic": "export.elastic",
    "export_gguf": "export.gguf",
    "export_subnetwork": "export.hf",
    "ExportResult": "export.hf",
    "GGUFModel": "model.llamacpp",
    "GispError": "core.errors",
    "load_model": "model.loading",
    "list_series": "choose.table",
    "load_pruned": "export.load",
    "LoadedModel": "model.loading",
    "plan": "pruning.pruner",
    "prepare_embedded_model": "model.loading",
    "prune": "pruning.pruner",
    "PruneConfig": "pruning.config",
    "PrunedModel": "export.folder",
    "PruneOutcome": "pruning.pruner",
    "recommend": "choose.recommend",
    "rescore_along": "pruning.pruner",
    "resolve_step": "pruning.subnetwork",
    "run_sweep": "choose.sweep",
    "StepRecord": "pruning.trajectory",
    "StructureSpace": "model.structures",
    "sweep_table": "choose.table",
    "SweepRequest": "choose.sweep",
    "Trajectory": "pruning.trajectory",
    "verify_export": "export.folder",
    "wikitext2_perplexity": "evaluation.evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        if importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return importlib.import_module(f".{name}", __name__)  # a subpackage: gisp_engine.export etc.
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
