"""Loading any step of a GISP Explorer elastic export: one folder, every step of a pruning trajectory.

This file was written into the model folder by GISP Explorer's export and needs nothing but
``torch``, ``transformers`` and ``safetensors``. Within each layer the stored heads and
channels are in survival order (never removed first, then by removal step, latest first),
so the structures kept at any step are a prefix of every tensor:

* ``q_proj``/``k_proj``/``v_proj``, ``gate_proj``/``up_proj`` (and their biases): the first rows;
* ``o_proj``/``down_proj``: stored transposed, under ``<name>_t``, so theirs are the first rows too.

``config.gisp_elastic`` lists every step's per-layer widths ``[query heads, KV heads, channels]``
and, per layer, ``q_to_kv``: for each stored query head, the stored position of its KV head.
A step's model is the folder's ``GispPrunedForCausalLM`` at that step's widths; loading reads
only the rows the step keeps, one tensor at a time (``safe_open(...).get_slice``).

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)                  # the last step
    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, gisp_step=6)
    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, gisp_sparsity=0.3)
"""

import json
import os

import torch
from safetensors import safe_open

from .configuration_gisp import GispPrunedConfig
from .modeling_gisp import GispPrunedForCausalLM

GISP_TEMPLATE_VERSION = 3
TRANSPOSED = "_t"  # suffix of a tensor stored input-major
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
SPARSITY_EPS = 1e-9
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")
_IGNORED_KWARGS = ("_from_auto", "_from_pipeline", "trust_remote_code", "adapter_kwargs", "low_cpu_mem_usage",
                   "use_safetensors", "code_revision")
# loaders such as lm-evaluation-harness's HFLM pass these, as None, whatever the model: None asks for nothing
_UNSET_KWARGS = ("max_memory", "gguf_file", "quantization_config", "offload_folder", "tp_plan")

try:  # transformers 5
    from transformers.initialization import no_init_weights as _no_init_weights
except ImportError:  # transformers 4
    from transformers.modeling_utils import no_init_weights as _no_init_weights


def choose_step(elastic, step=None, sparsity=None):
    """The step asked for: a step number, the last step at or below a parameter sparsity, or the last step."""
    steps = elastic["steps"]
    last = len(steps) - 1
    if step is not None and sparsity is not None:
        raise ValueError("give gisp_step or gisp_sparsity, not both")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= last:
            raise ValueError(f"gisp_step={step!r} is outside this folder's steps 0..{last}")
        return step
    if sparsity is None:
        return last
    top = steps[-1]["param_sparsity"]
    if not 0.0 <= float(sparsity) <= top + SPARSITY_EPS:
        raise ValueError(f"gisp_sparsity={sparsity!r} is outside 0 .. {top:.4f}, the largest this folder holds")
    best = 0
    for record in steps:
        if record["param_sparsity"] <= float(sparsity) + SPARSITY_EPS:
            best = record["step"]
    return best


def step_layers(elastic, step):
    """``gisp_layers`` (the per-layer spec ``modeling_gisp`` builds from) of one step."""
    specs = []
    for (heads, kv_heads, channels), q_to_kv in zip(elastic["steps"][step]["widths"], elastic["q_to_kv"]):
        kv_map = [int(k) for k in q_to_kv[:heads]]
        # the family's own grouped attention where query head j uses KV head j // group; else the expanding one
        grouped = heads and kv_heads and heads % kv_heads == 0 and kv_map == [
            j // (heads // kv_heads) for j in range(heads)
        ]
        specs.append({"num_heads": int(heads), "num_kv_heads": int(kv_heads), "intermediate_size": int(channels),
                      "kv_map": None if grouped or not heads else kv_map})
    return specs


def _device(device_map):
    if isinstance(device_map, dict):  # a map that puts every module on one device is that device: {"": "cpu"}
        devices = {str(torch.device("cuda", d) if isinstance(d, int) else torch.device(d)) for d in device_map.values()}
        if len(devices) == 1:
            return torch.device(devices.pop())
    elif device_map is None:
        return torch.device("cpu")
    elif isinstance(device_map, int):
        return torch.device("cuda", device_map)
    elif device_map == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif isinstance(device_map, (str, torch.device)):
        return torch.device(device_map)
    raise ValueError("an elastic GISP folder loads onto one device: give device_map as a device ('cpu', 'cuda:0') "
                     'or a map of everything to one device ({"": "cpu"})')


def _dtype(config, dtype):
    if dtype is None or dtype == "auto":
        dtype = getattr(config, "dtype", None) or torch.float32
    return getattr(torch, dtype.removeprefix("torch.")) if isinstance(dtype, str) else dtype


def _weight_files(folder, hub):
    """Stored tensor name -> local file."""
    index = _cached(folder, WEIGHTS_INDEX_NAME, hub, required=False)
    if index is None:
        path = _cached(folder, WEIGHTS_NAME, hub, required=True)
        with safe_open(path, framework="pt") as f:
            return {key: path for key in f.keys()}
    with open(index, encoding="utf-8") as fh:
        weight_map = json.load(fh)["weight_map"]
    paths = {name: _cached(folder, name, hub, required=True) for name in sorted(set(weight_map.values()))}
    return {key: paths[name] for key, name in weight_map.items()}


def _cached(folder, name, hub, required):
    if os.path.isdir(folder):
        path = os.path.join(folder, hub.get("subfolder") or "", name)
        if os.path.isfile(path):
            return path
        if required:
            raise OSError(f"{folder} has no {name}: it is not a complete GISP elastic export")
        return None
    from transformers.utils import cached_file

    return cached_file(folder, name, _raise_exceptions_for_missing_entries=required, **hub)


_STORED_DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}


class _RowReader:
    """Reads the first rows of stored tensors with ``safe_open(...).get_slice``.

    A tensor kept whole, in the stored dtype and wanted on the CPU, is a view of the mapped file (as
    stock loading does): its pages are read when first used. A cut one is copied, so that the pages
    of the rows it drops are never mapped (the kernel maps a page's neighbours along with it); so is
    one transposed back or wanted in another dtype or on another device. Copies go through
    handles reopened every ``window`` bytes, so the pages read for copying leave the process again.
    """

    def __init__(self, window=16 * 2**20):
        self.window, self.mapped, self.copying, self.since_open = window, {}, {}, 0

    def _handle(self, pool, path):
        handle = pool.get(path)
        if handle is None:
            handle = pool[path] = safe_open(path, framework="pt")
        return handle

    def read(self, path, key, shape, transposed, dtype, device):
        """A tensor of ``shape`` made of the first rows of a stored one (transposed back if stored so)."""
        part = self._handle(self.mapped, path).get_slice(key)  # reading shape and dtype touches no data
        stored, stored_dtype = list(part.get_shape()), part.get_dtype()
        wanted = list(shape[::-1] if transposed else shape)
        if not stored or stored[1:] != wanted[1:] or wanted[0] > stored[0]:
            raise ValueError(f"{key} is stored as {stored}, which does not hold {wanted}: not this folder's tensor")
        whole = wanted[0] == stored[0]
        if whole and not transposed and device.type == "cpu" and _STORED_DTYPES.get(stored_dtype) == dtype:
            return part[:]
        if self.since_open >= self.window:
            self.copying.clear()  # the mappings go with the last reference (no view of them is kept)
            self.since_open = 0
        view = self._handle(self.copying, path).get_slice(key)[: wanted[0]]
        out = torch.empty(shape, dtype=dtype, device=device)
        out.copy_(view.t() if transposed else view)
        self.since_open += view.numel() * view.element_size()
        return out

    def close(self):
        self.mapped.clear()  # the views keep their own mapping alive
        self.copying.clear()


class GispElasticForCausalLM(GispPrunedForCausalLM):
    """One step of an elastic export; ``from_pretrained`` builds it at that step's widths and reads only its rows."""

    config_class = GispPrunedConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        if model_args:
            raise TypeError("GispElasticForCausalLM.from_pretrained takes no positional model arguments")
        folder = str(pretrained_model_name_or_path)
        hub = {name: kwargs.pop(name) for name in _HUB_KWARGS if name in kwargs}
        dtype = kwargs.pop("dtype", None)
        torch_dtype = kwargs.pop("torch_dtype", None)
        device = _device(kwargs.pop("device_map", None))
        attn_implementation = kwargs.pop("attn_implementation", None)
        step, sparsity = kwargs.pop("gisp_step", None), kwargs.pop("gisp_sparsity", None)
        for name in _IGNORED_KWARGS:
            kwargs.pop(name, None)
        for name in _UNSET_KWARGS:
            if name in kwargs and kwargs[name] is None:
                del kwargs[name]
        if config is None:
            config, kwargs = cls.config_class.from_pretrained(folder, return_unused_kwargs=True, **hub, **kwargs)
        if kwargs:
            raise TypeError(f"an elastic GISP folder does not take {', '.join(sorted(kwargs))} when loading")
        elastic = getattr(config, "gisp_elastic", None)
        if not isinstance(elastic, dict) or "steps" not in elastic:
            raise ValueError(f"{folder}: config.json has no `gisp_elastic`: it is not a GISP elastic export")
        if step is None and sparsity is None:  # AutoModel hands gisp_step=... over through the config
            step, sparsity = getattr(config, "gisp_step", None), getattr(config, "gisp_sparsity", None)
        step = choose_step(elastic, step, sparsity)
        config.gisp_step, config.gisp_sparsity = step, None
        config.gisp_layers = step_layers(elastic, step)
        dtype = _dtype(config, dtype if dtype is not None else torch_dtype)

        extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
        with _no_init_weights():  # every weight is read below; untouched memory costs nothing
            model = cls._from_config(config, dtype=dtype, **extra)
        files = _weight_files(folder, hub)
        model.tie_weights()  # tied weights are stored once (under the input embedding's name): list them once
        saved = model.state_dict(keep_vars=True)
        wanted = [(name, tuple(t.shape), t.dtype) for name, t in model.named_parameters()]
        wanted += [(name, tuple(t.shape), t.dtype) for name, t in model.named_buffers() if name in saved]
        del saved
        wanted.sort(key=lambda item: -torch.Size(item[1]).numel())  # largest first, while little else is held
        reader = _RowReader()
        for name, shape, tensor_dtype in wanted:
            transposed = name + TRANSPOSED in files
            key = name + TRANSPOSED if transposed else name
            if key not in files:
                raise ValueError(f"{folder} holds no tensor {name}: not a complete GISP elastic export")
            value = reader.read(files[key], key, shape, transposed, tensor_dtype, device)
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            if attr in module._parameters:  # replaces the placeholder, which is freed
                module._parameters[attr] = torch.nn.Parameter(value, requires_grad=module._parameters[attr].requires_grad)
            else:
                module._buffers[attr] = value
        reader.close()
        for name, buffer in model.named_buffers():  # computed ones (rotary frequencies) follow the weights
            if buffer.device != device:
                module_name, _, attr = name.rpartition(".")
                model.get_submodule(module_name)._buffers[attr] = buffer.to(device)
        model.tie_weights()  # again: the output embedding still holds the placeholder
        output, input_ = model.get_output_embeddings(), model.get_input_embeddings()
        if getattr(config, "tie_word_embeddings", False) and output is not None and output.weight is not input_.weight:
            raise ValueError("the output embedding was not tied to the input embedding")
        try:
            from transformers import GenerationConfig

            model.generation_config = GenerationConfig.from_pretrained(folder, **hub)
        except OSError:  # no generation_config.json: keep the one derived from the config
            pass
        model.eval()
        return model
