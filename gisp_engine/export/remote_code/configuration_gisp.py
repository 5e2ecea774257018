"""Configuration of a model pruned by GISP Explorer: its base family's config plus every layer's width.

This file was written into the model folder by GISP Explorer's export and needs nothing
but ``transformers``. The base family is named by the constants below; ``gisp_layers`` in
config.json holds one entry per decoder layer:

* ``num_heads``, ``num_kv_heads``: query and KV heads kept (0 heads: the layer has no attention);
* ``intermediate_size``: MLP channels kept;
* ``kv_map``: for each kept query head, the position of its KV head among the kept ones, or
  null when the kept query heads form equal groups (then the stock grouped attention is used).

Load with ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``.
"""

import importlib

GISP_TEMPLATE_VERSION = 2
# filled in by the export: the family of the model that was pruned
BASE_MODEL_TYPE = "llama"
BASE_CONFIG_MODULE = "transformers.models.llama.configuration_llama"
BASE_CONFIG_CLASS = "LlamaConfig"

_BaseConfig = getattr(importlib.import_module(BASE_CONFIG_MODULE), BASE_CONFIG_CLASS)


class GispPrunedConfig(_BaseConfig):
    """The base config; the global head counts and MLP width are the dense model's, ``gisp_layers`` the kept ones."""

    model_type = "gisp_" + BASE_MODEL_TYPE
