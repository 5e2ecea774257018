"""Language modelling: mean next-token NLL over packed windows of general text."""

from __future__ import annotations

import math

import torch

from ..data import CalibrationSet
from ..nll import sequence_nll
from .base import Objective


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
