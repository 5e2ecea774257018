"""Modeling code of a model pruned by GISP Explorer: the base family's model, each layer at its own width.

This file was written into the model folder by GISP Explorer's export and needs nothing
but ``torch`` and ``transformers``. Every decoder layer is the base family's layer with
its attention and MLP rebuilt at the widths in ``config.gisp_layers``:

* kept query heads in equal groups per kept KV head: the family's own attention;
* kept query heads in unequal groups: ``GispAttention``. The KV cache holds only the kept
  KV heads (compact); after the cache update each query head gets its own KV head through
  ``kv_map``, and attention runs with one KV head per query head;
* no heads left: ``GispNullAttention`` (adds nothing; keeps the cache in step);
* the family's gated MLP with the kept channels.

With ``config.gisp_output_bias`` (FLAP's bias compensation) every ``o_proj`` and
``down_proj`` has a bias, and a layer with no heads adds a constant bias of its own.

Load with ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``.
"""

import copy
import importlib
import inspect

import torch

from .configuration_gisp import GispPrunedConfig

GISP_TEMPLATE_VERSION = 2
# filled in by the export: the family of the model that was pruned
BASE_MODELING_MODULE = "transformers.models.llama.modeling_llama"
BASE_CLASS_PREFIX = "Llama"

_base = importlib.import_module(BASE_MODELING_MODULE)
_BaseAttention = getattr(_base, BASE_CLASS_PREFIX + "Attention")
_BaseMLP = getattr(_base, BASE_CLASS_PREFIX + "MLP")
_BaseForCausalLM = getattr(_base, BASE_CLASS_PREFIX + "ForCausalLM")

_CACHE_NAMES = ("cache", "past_key_values", "past_key_value")  # the cache argument's name differs by version
_parameters = inspect.signature(_BaseAttention.forward).parameters
_CACHE_ARG = next((name for name in _CACHE_NAMES if name in _parameters), "past_key_values")


def _pop_cache(kwargs):
    cache = None
    for name in _CACHE_NAMES:
        value = kwargs.pop(name, None)
        if value is not None:
            cache = value
    return cache


def _head_dim(config):
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class _ExpandingCache:
    """Stands in for the KV cache in one attention call: stores compact K/V, returns one K/V per query head."""

    def __init__(self, cache, index):
        self._cache = cache
        self._index = index

    def update(self, key_states, value_states, *args, **kwargs):
        if self._cache is not None:
            key_states, value_states = self._cache.update(key_states, value_states, *args, **kwargs)
        return key_states.index_select(1, self._index), value_states.index_select(1, self._index)

    def __getattr__(self, name):
        return getattr(self._cache, name)


class GispAttention(_BaseAttention):
    """The family's attention for kept query heads that do not form equal groups over the kept KV heads."""

    def __init__(self, config, layer_idx, kv_map):
        super().__init__(config, layer_idx)
        self.kv_map = tuple(int(i) for i in kv_map)
        self.num_key_value_groups = 1  # K/V arrive expanded to one per query head
        self._kv_index = {}  # device -> index tensor (not a buffer: it is derived from the config)

    def _index_on(self, device):
        index = self._kv_index.get(device)
        if index is None:
            index = self._kv_index[device] = torch.tensor(self.kv_map, dtype=torch.long, device=device)
        return index

    def forward(self, *args, **kwargs):
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        cache = _pop_cache(kwargs)
        kwargs[_CACHE_ARG] = _ExpandingCache(cache, self._index_on(hidden_states.device))
        return super().forward(*args, **kwargs)


# written as torch.nn.Module: transformers lets a model switch attention kernels at run time unless its
# code holds an `...Attention(nn.Module)` class that does not dispatch through ALL_ATTENTION_FUNCTIONS
class GispNullAttention(torch.nn.Module):
    """The attention block of a layer whose heads were all removed: it adds nothing to the residual stream."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = _head_dim(config)
        # FLAP's bias compensation: what the removed heads added on average, as a constant
        self.bias = torch.nn.Parameter(torch.zeros(config.hidden_size)) if _output_bias(config) else None

    def forward(self, hidden_states, *args, **kwargs):
        cache = _pop_cache(kwargs)
        if cache is not None:  # keep this layer's cache length in step with the others
            batch, length = hidden_states.shape[:2]
            empty = hidden_states.new_zeros(batch, 0, length, self.head_dim)
            cache.update(empty, empty, self.layer_idx)
        out = torch.zeros_like(hidden_states)
        return (out if self.bias is None else out + self.bias.to(out.dtype)), None


def _output_bias(config):
    return bool(getattr(config, "gisp_output_bias", False))


def _with_bias(linear):
    return torch.nn.Linear(linear.in_features, linear.out_features, bias=True,
                           device=linear.weight.device, dtype=linear.weight.dtype)


def _layer_config(config, spec):
    layer = copy.copy(config)  # a shallow copy: only the widths differ from the model's config
    layer.num_attention_heads = max(1, int(spec["num_heads"]))
    layer.num_key_value_heads = max(1, int(spec["num_kv_heads"]))
    layer.intermediate_size = int(spec["intermediate_size"])
    layer.head_dim = _head_dim(config)
    return layer


def _layer_specs(config):
    specs = getattr(config, "gisp_layers", None)
    if not isinstance(specs, (list, tuple)) or len(specs) != config.num_hidden_layers:
        raise ValueError("config.json needs `gisp_layers` with one entry per decoder layer (a GISP Explorer export)")
    return specs


def _resize_layers(model, config):
    for layer_idx, (layer, spec) in enumerate(zip(model.layers, _layer_specs(config))):
        layer_config = _layer_config(config, spec)
        if int(spec["num_heads"]) == 0:
            attention = GispNullAttention(config, layer_idx)
        elif spec.get("kv_map") is not None:
            attention = GispAttention(layer_config, layer_idx, spec["kv_map"])
        else:
            attention = _BaseAttention(layer_config, layer_idx)
        attention.config = config  # run-time choices (attention kernel, sliding window) follow the model's config
        layer.self_attn = attention
        layer.mlp = _BaseMLP(layer_config)
        if _output_bias(config):
            if int(spec["num_heads"]) > 0:
                attention.o_proj = _with_bias(attention.o_proj)
            layer.mlp.down_proj = _with_bias(layer.mlp.down_proj)


class GispPrunedForCausalLM(_BaseForCausalLM):
    config_class = GispPrunedConfig

    def post_init(self):
        # the base class has built dense layers (on the meta device under from_pretrained, so
        # at no cost); give each layer its pruned width before the weights are initialized
        _resize_layers(self.model, self.config)
        super().post_init()

    def _get_static_cache_init_shape(self):
        # layers differ in KV heads: a static cache sizes each layer from its first K/V instead
        return None
