"""Gemma 3 (text-only ``Gemma3ForCausalLM``): per-head q/k RMS norms, GELU-tanh gated MLP, tied embeddings.

What differs from Llama, and why the shared machinery still fits:

- ``q_norm``/``k_norm`` act within a head (over ``head_dim``) with weights shared by every
  head, so removing heads never touches them;
- ``head_dim`` (256 in the 270M) is not ``hidden_size / num_heads``: geometry reads it from the config;
- the 270M has a single KV head: under the ``query`` policy it stays while any query head is kept,
  and a layer with no query heads left becomes ``NullAttention`` (``post_attention_layernorm`` of
  a zero output is zero, so the layer then adds nothing, as in a masked model);
- sliding-window and global layers are interleaved (``config.layer_types``): the window is per
  head and unchanged by head removal;
- the 262k-entry LM head is the tied embedding; the chunked head/loss never holds full logits.
"""

from ...core.errors import GispError
from ._base import DecoderAdapter

_GATED_ACTIVATIONS = {"gelu_pytorch_tanh", "gelu", "silu"}


class Gemma3Adapter(DecoderAdapter):
    family = "gemma3"
    model_types = ("gemma3_text",)
    # dense Gemma 3 270M on WikiText-2 (8 windows of 128): perplexity 254 without a BOS, 43 with one per window
    needs_bos = True
    notes = (
        "q_norm/k_norm act within a head (over head_dim) and are kept whole; "
        "the single KV head of a layer stays while any of its query heads does."
    )

    def check_config(self, config) -> None:
        act = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None)
        if act not in _GATED_ACTIVATIONS:
            raise GispError(f"gemma3: MLP activation {act!r} is not supported (expected a gated GELU-tanh MLP)")
        # the engine's chunked loss applies the LM head alone; a soft cap would change every logit
        if getattr(config, "final_logit_softcapping", None) is not None:
            raise GispError("gemma3: final_logit_softcapping is not supported (Gemma 3 checkpoints leave it unset)")


ADAPTER = Gemma3Adapter
