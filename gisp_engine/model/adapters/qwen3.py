"""Qwen3: Llama layout with per-head RMSNorm on queries and keys (shared over heads, never pruned)."""

from ._base import DecoderAdapter


class Qwen3Adapter(DecoderAdapter):
    family = "qwen3"
    model_types = ("qwen3",)
    notes = "q_norm/k_norm act within a head (over head_dim) and are kept whole."


ADAPTER = Qwen3Adapter
