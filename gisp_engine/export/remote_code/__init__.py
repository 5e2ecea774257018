"""The modeling code an export carries, so that it loads with ``trust_remote_code=True`` and nothing of GISP.

``configuration_gisp.py`` and ``modeling_gisp.py`` in this folder are the templates: valid
Python written for the Llama family, whose family constants are filled in at export time.
They import only ``torch`` and ``transformers`` (never ``gisp_engine``), because they run in
the user's process, where this project may not be installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

TEMPLATE_VERSION = 2  # of configuration_gisp.py and modeling_gisp.py
ELASTIC_TEMPLATE_VERSION = 3  # of modeling_gisp_elastic.py (3: a device map of one device loads, as lm-eval passes)
CONFIG_FILE = "configuration_gisp.py"
MODELING_FILE = "modeling_gisp.py"
CONFIG_CLASS = "GispPrunedConfig"
MODEL_CLASS = "GispPrunedForCausalLM"
ELASTIC_FILE = "modeling_gisp_elastic.py"  # every step of a trajectory in one folder (needs the two above)
ELASTIC_CLASS = "GispElasticForCausalLM"
_HERE = Path(__file__).parent


@dataclass(frozen=True)
class BaseFamily:
    """Where the base model's classes live in transformers, e.g. ``llama`` / ``modeling_llama`` / ``Llama``."""

    model_type: str
    config_module: str
    config_class: str
    modeling_module: str
    class_prefix: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @property
    def pruned_model_type(self) -> str:
        return "gisp_" + self.model_type


def auto_map(elastic: bool = False) -> dict[str, str]:
    model_file, model_class = (ELASTIC_FILE, ELASTIC_CLASS) if elastic else (MODELING_FILE, MODEL_CLASS)
    return {
        "AutoConfig": f"{CONFIG_FILE.removesuffix('.py')}.{CONFIG_CLASS}",
        "AutoModelForCausalLM": f"{model_file.removesuffix('.py')}.{model_class}",
    }


def _fill(text: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        text, count = re.subn(rf'^{name} = ".*"$', f"{name} = {value!r}".replace("'", '"'), text, flags=re.M)
        if count != 1:  # the template and this renderer must agree on every constant
            raise RuntimeError(f"remote-code template: constant {name} found {count} times")
    return text


def template_version(elastic: bool = False) -> int:
    """The version an export of this kind records (its code is checked byte for byte all the same)."""
    return ELASTIC_TEMPLATE_VERSION if elastic else TEMPLATE_VERSION


def render(family: BaseFamily, elastic: bool = False) -> dict[str, str]:
    """File name -> text of the configuration and modeling files for ``family`` (and the elastic loader)."""
    config = _fill(
        (_HERE / CONFIG_FILE).read_text(encoding="utf-8"),
        {"BASE_MODEL_TYPE": family.model_type, "BASE_CONFIG_MODULE": family.config_module,
         "BASE_CONFIG_CLASS": family.config_class},
    )
    modeling = _fill(
        (_HERE / MODELING_FILE).read_text(encoding="utf-8"),
        {"BASE_MODELING_MODULE": family.modeling_module, "BASE_CLASS_PREFIX": family.class_prefix},
    )
    files = {CONFIG_FILE: config, MODELING_FILE: modeling}
    if elastic:  # family-independent: it builds the model above at a step's widths
        files[ELASTIC_FILE] = (_HERE / ELASTIC_FILE).read_text(encoding="utf-8")
    return files
