"""Qwen2 / Qwen2.5: Llama layout with biases on q, k and v (pruned with their rows)."""

from ._base import DecoderAdapter


class Qwen2Adapter(DecoderAdapter):
    family = "qwen2"
    model_types = ("qwen2",)
    notes = "The q/k/v biases of a removed head are removed with its rows."


ADAPTER = Qwen2Adapter
