"""Language modelling: mean next-token NLL over packed windows of general text."""

from __future__ import annotations

import math

import torch

from ...data.text import CalibrationSet, build_calibration, resolve_bos, resolve_text_source
from ...model.nll import sequence_nll
from ._base import Objective, ObjectiveSpec


class PerplexityObjective(Objective):
    name = "perplexity"

    def __init__(self, calibration: CalibrationSet, batch_size: int):
        self.calibration = calibration
        ids = calibration.input_ids
        self.num_sequences = ids.shape[0]
        self._batches = [{"input_ids": chunk} for chunk in ids.split(max(1, batch_size))]

    def batches(self):
        return self._batches

    def loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        return sequence_nll(model, batch["input_ids"]).sum() / self.num_sequences

    def describe(self) -> dict:
        return {"objective": self.name, "calibration": self.calibration.describe()}

    def summary(self, value: float) -> dict:
        return {"perplexity": math.exp(value) if value < 700 else float("inf")}


def perplexity_identity(config, family: str | None) -> dict:
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


def build_perplexity(loaded, config) -> Objective:
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


OBJECTIVE = ObjectiveSpec("perplexity", perplexity_identity, build_perplexity)
