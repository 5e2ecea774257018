"""Model-family adapters: the only place that knows how a family's modules are laid out. One module per family
(``llama.py``, ``gemma3.py``, ...), each defining ``ADAPTER``; ``registry.ADAPTERS`` finds them by file name."""

from __future__ import annotations

from ...core import registry
from ...core.errors import GispError
from ._base import AttentionLinears, DecoderAdapter, Geometry, MlpLinears

ADAPTERS: tuple[type[DecoderAdapter], ...] = tuple(registry.ADAPTERS.all().values())
_BY_MODEL_TYPE = {mt: cls for cls in ADAPTERS for mt in cls.model_types}

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(_BY_MODEL_TYPE))
#: families whose models expect a BOS token at the start of every sequence
BOS_FAMILIES: frozenset[str] = frozenset(cls.family for cls in ADAPTERS if cls.needs_bos)


def family_of_config(config) -> str | None:
    """The family of a transformers config (a GISP export's base family), or None when unsupported."""
    model_type = getattr(config, "gisp_base_model_type", None) or getattr(config, "model_type", None)
    cls = _BY_MODEL_TYPE.get(model_type)
    return cls.family if cls is not None else None


def adapter_for_config(config) -> DecoderAdapter:
    """The adapter for a transformers config, or a GispError naming the supported families."""
    model_type = getattr(config, "model_type", None)
    cls = _BY_MODEL_TYPE.get(model_type)
    if cls is None:
        raise GispError(
            f"unsupported architecture {model_type!r}: GISP supports {', '.join(SUPPORTED_MODEL_TYPES)} "
            "(decoder-only models with a gated MLP)"
        )
    adapter = cls()
    adapter.check_config(config)
    return adapter


__all__ = [
    "ADAPTERS",
    "BOS_FAMILIES",
    "SUPPORTED_MODEL_TYPES",
    "AttentionLinears",
    "DecoderAdapter",
    "Geometry",
    "MlpLinears",
    "adapter_for_config",
    "family_of_config",
]
