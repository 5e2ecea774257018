"""Mistral: Llama layout with grouped-query attention and an optional sliding window."""

from ._base import DecoderAdapter


class MistralAdapter(DecoderAdapter):
    family = "mistral"
    model_types = ("mistral",)
    notes = "The sliding window applies per head and is unchanged by head removal."


ADAPTER = MistralAdapter
