"""Pluggable objectives: each says what identifies it (for the cache key) and how to build it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..data import build_calibration, resolve_bos, resolve_text_source
from ..errors import GispError
from ..nll import input_device, sequence_nll
from .base import Objective
from .perplexity import PerplexityObjective
from .margin import MarginObjective, build_margin, margin_identity
from .gsm8k import GSM8KObjective, build_gsm8k, gsm8k_identity


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    identity: Callable  # (PruneConfig, family) -> dict: everything that determines the calibration signal
    build: Callable  # (LoadedModel, PruneConfig) -> Objective


def _perplexity_identity(config, family: str | None) -> dict:
    source = resolve_text_source(config.calib)
    bos = resolve_bos(config.bos, family)
    return {
        "objective": "perplexity",
        "calib": source.identity(),
        "num_samples": config.num_samples,
        "seq_len": config.seq_len,
        "seed": config.seed,
        # packed and stream are left out so that keys made before the settings existed still answer
        **({} if config.sampling == "packed" else {"sampling": config.sampling}),
        **({} if bos == "stream" else {"bos": bos}),
    }


def _perplexity_build(loaded, config) -> Objective:
    source = resolve_text_source(config.calib)
    calibration = build_calibration(
        loaded.tokenizer,
        source,
        config.num_samples,
        config.seq_len,
        config.seed,
        config.sampling,
        resolve_bos(config.bos, loaded.adapter.family),
    )
    return PerplexityObjective(calibration, config.resolved_batch_size(loaded.device))


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "perplexity": ObjectiveSpec("perplexity", _perplexity_identity, _perplexity_build),
    "margin": ObjectiveSpec("margin", margin_identity, build_margin),
    "gsm8k": ObjectiveSpec("gsm8k", gsm8k_identity, build_gsm8k),
}


def objective_spec(name: str) -> ObjectiveSpec:
    spec = OBJECTIVES.get(name)
    if spec is None:
        raise GispError(f"unknown objective {name!r}: choose one of {', '.join(OBJECTIVES)}")
    return spec


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
