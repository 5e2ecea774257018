"""Tiny random models of every supported family, saved as real model folders.

Each has a small byte-level BPE tokenizer trained on the shared calibration text, so that
the whole path (load_model, calibration, scoring, slicing, evaluation) runs as on a real
model, in seconds.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
}

_SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step. "
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells. "
    "In the beginning the universe was created; this has made a lot of people very angry. "
)


def tiny_tokenizer(folder: Path, texts: list[str] | None = None):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts or [_SAMPLE_TEXT] * 20, vocab_size=320, min_frequency=1, special_tokens=["<|endoftext|>"]
    )
    # the one special token serves as BOS too (as GPT-2's does), so that --bos each works on every family
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tok.save_pretrained(folder)
    return tok


def make_tiny_model(
    folder: Path,
    family: str = "llama",
    gqa: bool = True,
    layers: int = 4,
    seed: int = 0,
    hidden: int = 32,
    heads: int = 4,
    intermediate: int = 48,
    dtype=torch.float32,
) -> Path:
    """Write a randomly initialised model of ``family`` (with tokenizer) into ``folder``."""
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = tiny_tokenizer(folder)
    config_cls = getattr(transformers, FAMILIES[family][0])
    model_cls = getattr(transformers, FAMILIES[family][1])
    kwargs = dict(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2 if gqa else heads,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.eos_token_id,
    )
    if family == "qwen3":
        kwargs["head_dim"] = hidden // heads
    if family == "gemma3":
        # as in Gemma 3 270M: one KV head (gqa), head_dim wider than hidden/heads, tied embeddings,
        # sliding and global layers interleaved (a window shorter than the test sequences)
        kwargs.update(
            num_key_value_heads=1 if gqa else heads,
            head_dim=2 * hidden // heads,
            query_pre_attn_scalar=16,
            tie_word_embeddings=True,
            sliding_window=8,
            layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
        )
    config = config_cls(**kwargs)
    torch.manual_seed(seed)
    model = model_cls(config).to(dtype)
    with torch.no_grad():  # larger random weights than the default init, so that scores spread out
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.8, 1.2)
            elif p.dim() == 2:
                p.normal_(0, 0.3)
            else:
                p.normal_(0, 0.05)
    model.save_pretrained(folder)
    return folder


@contextlib.contextmanager
def cache_dir(path: Path | str) -> Iterator[None]:
    """``GISP_CACHE_DIR`` set to ``path`` for the block, then restored (for module- and session-scoped
    fixtures, which pytest's ``monkeypatch`` cannot serve)."""
    saved = os.environ.get("GISP_CACHE_DIR")
    os.environ["GISP_CACHE_DIR"] = str(path)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("GISP_CACHE_DIR", None)
        else:
            os.environ["GISP_CACHE_DIR"] = saved
