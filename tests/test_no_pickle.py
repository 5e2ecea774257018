"""No pickle anywhere (README): no module of the engine can write or read a file through pickle."""

from __future__ import annotations

import ast
from pathlib import Path

import gisp_engine

PACKAGE = Path(gisp_engine.__file__).resolve().parent
PICKLING_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "copyreg"}
PICKLING_CALLS = {
    "torch.save",
    "torch.load",
    "np.save",
    "np.load",
    "numpy.save",
    "numpy.load",
    "pd.read_pickle",
    "pandas.read_pickle",
}
# in memory between ranks, never on disk: torch.distributed pickles rank 0's cache decision for the others
ALLOWED = {("distributed.py", "dist.broadcast_object_list")}


def pickling(source: str, name: str = "") -> list[str]:
    """What in ``source`` pickles: an import of a pickling module, a call that (un)pickles, allow_pickle,
    or a ``.to_pickle`` / ``safe_serialization=False`` save."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLING_MODULES:
            found.append(f"from {node.module} import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if (name, func) in ALLOWED:
                continue
            if (
                func in PICKLING_CALLS
                or func.endswith((".to_pickle", "broadcast_object_list", "all_gather_object"))
                or keywords.get("allow_pickle") == "True"
                or keywords.get("safe_serialization") == "False"
                or (func.endswith("torch.load") and keywords.get("weights_only") != "True")
            ):
                found.append(f"{func}(...) line {node.lineno}")
    return found


def test_no_module_of_the_engine_pickles():
    found = {
        str(p.relative_to(PACKAGE)): hits
        for p in sorted(PACKAGE.rglob("*.py"))
        if (hits := pickling(p.read_text(), p.name))
    }
    assert found == {}, f"pickle in the engine: {found}"


def test_the_scan_sees_each_way_to_pickle():
    assert pickling("import pickle") == ["import pickle"]
    assert pickling("from joblib import dump") == ["from joblib import dump"]
    assert pickling("import torch\ntorch.save(m, 'x.pt')")
    assert pickling("import numpy as np\nnp.load('a.npy', allow_pickle=True)")
    assert pickling("model.save_pretrained(out, safe_serialization=False)")
    assert pickling("df.to_pickle('x')")
    assert pickling("dist.broadcast_object_list(box)", "trajectory.py")
    assert pickling("dist.broadcast_object_list(box)", "distributed.py") == []
