"""What the engine needs to know about a model family, in one place.

An adapter answers four questions: the model's geometry (layers, heads, widths), where
the decoder layers are, which linear layers form the attention block, and which form the
gated MLP. Adding a family is adding a small file with a subclass, registered in
``gisp_engine.model.adapters``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn


@dataclass(frozen=True)
class Geometry:
    """The dense shape of a decoder-only transformer with a gated MLP."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 for multi-head attention)."""
        return self.num_heads // self.num_kv_heads

    @property
    def is_gqa(self) -> bool:
        return self.num_kv_heads < self.num_heads

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AttentionLinears:
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear


@dataclass(frozen=True)
class MlpLinears:
    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear


class DecoderAdapter:
    """Hugging Face decoder-only model with ``model.model.layers[i].self_attn`` / ``.mlp``.

    Subclasses set ``family`` and ``model_types`` and override what differs.
    """

    family: str = ""
    model_types: tuple[str, ...] = ()
    #: Notes shown to users about what pruning keeps untouched in this family.
    notes: str = ""
    #: Whether the family's models are trained to see a BOS token first, so that a window of text
    #: cut from a stream without one is off-distribution (``--bos auto`` then prepends one to each)
    needs_bos: bool = False

    def geometry(self, config) -> Geometry:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return Geometry(
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            intermediate_size=config.intermediate_size,
        )

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.model.layers

    def attention_module(self, layer: nn.Module) -> nn.Module:
        return layer.self_attn

    def set_attention_module(self, layer: nn.Module, module: nn.Module) -> None:
        layer.self_attn = module

    def attention(self, layer: nn.Module) -> AttentionLinears:
        attn = self.attention_module(layer)
        return AttentionLinears(q=attn.q_proj, k=attn.k_proj, v=attn.v_proj, o=attn.o_proj)

    def mlp(self, layer: nn.Module) -> MlpLinears:
        mlp = layer.mlp
        return MlpLinears(gate=mlp.gate_proj, up=mlp.up_proj, down=mlp.down_proj)

    def check_config(self, config) -> None:
        """Raise GispError for a member of the family that the engine cannot prune."""
        act = getattr(config, "hidden_act", "silu")
        if act not in {"silu", "swish", "gelu", "gelu_pytorch_tanh"}:
            from ...core.errors import GispError

            raise GispError(f"{self.family}: MLP activation {act!r} is not supported (expected a gated SiLU/GELU MLP)")
