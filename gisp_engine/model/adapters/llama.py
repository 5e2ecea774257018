"""Llama (Llama 2/3, SmolLM, TinyLlama ...): multi-head or grouped-query attention, SwiGLU MLP."""

from ._base import DecoderAdapter


class LlamaAdapter(DecoderAdapter):
    family = "llama"
    model_types = ("llama",)


ADAPTER = LlamaAdapter
