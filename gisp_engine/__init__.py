"""GISP engine: Global Iterative Structured Pruning of Hugging Face causal LMs.

The library behind the ``gisp`` CLI and the Streamlit explorer (it never imports Streamlit).

    from gisp_engine import PruneConfig, prune, load_model, apply_step, wikitext2_perplexity
    outcome = prune(PruneConfig(steps=10, max_sparsity=0.5))
    traj = outcome.trajectory
    loaded = load_model("smollm2-135m")
    apply_step(loaded, traj, traj.step_at_sparsity(0.3))   # physically sliced, in place
    print(wikitext2_perplexity(loaded.model, loaded.tokenizer, limit=50).perplexity)
"""

from .config import PruneConfig
from .errors import GispError
from .evaluate import wikitext2_perplexity
from .export import ExportResult, PrunedModel, export_subnetwork, load_pruned
from .models import LoadedModel, load_model, prepare_embedded_model
from .settings import ENGINE_VERSION
from .pruner import PruneOutcome, plan, prune
from .structures import StructureSpace
from .subnetwork import apply_step, check_compatible, resolve_step
from .trajectory import StepRecord, Trajectory

__version__ = ENGINE_VERSION

__all__ = [
    "ExportResult",
    "GispError",
    "LoadedModel",
    "PrunedModel",
    "PruneConfig",
    "PruneOutcome",
    "StepRecord",
    "StructureSpace",
    "Trajectory",
    "apply_step",
    "check_compatible",
    "export_subnetwork",
    "load_model",
    "load_pruned",
    "plan",
    "prepare_embedded_model",
    "prune",
    "resolve_step",
    "wikitext2_perplexity",
]
