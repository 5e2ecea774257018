"""Are trajectories byte-identical before and after a change? Prunes tiny Llama and Gemma 3 models with every
method (3 steps) and the margin and GSM8K objectives (2 steps), with the code of a base commit (a git worktree)
and with the working tree, and compares every trajectory: the arrays of ``structures.safetensors`` (bytes too), and
``trajectory.json`` without its times and versions (the cache key included). For refactors that must not change a
result (methods as strategies, score_structures split, the subpackage move).

    GISP_DATA_DIR=../shared/data GISP_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/check_identical.py --base 5206711

About 4 minutes on 2 CPU cores. Exit 1 when any trajectory differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOLATILE = {"created", "wall_time_s", "wall_s", "versions"}

RUNNER = r"""
import os, sys
from pathlib import Path
tree, out, models = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
sys.path[:0] = [str(tree), str(tree / "tests")]
os.environ["GISP_CACHE_DIR"] = str(out / "cache")
from gisp_engine import PruneConfig, prune
base = dict(num_samples=4, seq_len=32, protect_first=1, dtype="float32", batch_size=2, device="cpu")
for fam in ("llama", "gemma3"):
    m = str(models / fam)
    runs = {f"{fam}-{method}": PruneConfig(model=m, method=method, steps=3, max_sparsity=0.4, **base)
            for method in ("gisp", "gisp-oneshot", "llm-pruner", "magnitude", "random", "wanda-sp", "flap")}
    runs[f"{fam}-margin"] = PruneConfig(model=m, objective="margin", tasks="arc_easy,piqa", calib_items=4, steps=2,
                                        max_sparsity=0.3, **base)
    runs[f"{fam}-gsm8k"] = PruneConfig(model=m, objective="gsm8k", calib_tokens=300, steps=2, max_sparsity=0.3, **base)
    for name, cfg in runs.items():
        prune(cfg, use_cache=False, out=out / name)
"""


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def compare(a: Path, b: Path) -> int:
    import numpy as np
    from safetensors.numpy import load_file

    differ = 0
    names = sorted(p.name for p in a.iterdir() if p.is_dir() and p.name != "cache")
    for n in names:
        ta, tb = load_file(str(a / n / "structures.safetensors")), load_file(str(b / n / "structures.safetensors"))
        arrays = ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k], equal_nan=True) for k in ta)
        same_bytes = (a / n / "structures.safetensors").read_bytes() == (b / n / "structures.safetensors").read_bytes()
        ja = _clean(json.loads((a / n / "trajectory.json").read_text()))
        jb = _clean(json.loads((b / n / "trajectory.json").read_text()))
        same = arrays and ja == jb
        differ += not same
        print(
            f"{n:22s} key {ja.get('key')}  arrays {'same' if arrays else 'DIFFER'}  "
            f"bytes {'same' if same_bytes else 'differ'}  json {'same' if ja == jb else 'DIFFER'}"
        )
    print(f"{len(names)} trajectories, {differ} differ")
    return differ


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="the commit to compare the working tree with")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import make_tiny_model

    with tempfile.TemporaryDirectory(prefix="gisp-identical-") as tmp:
        tmp = Path(tmp)
        models = tmp / "models"
        make_tiny_model(models / "llama", "llama", gqa=True, seed=5)
        make_tiny_model(models / "gemma3", "gemma3", gqa=True, seed=6)
        base = tmp / "base"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-f", str(base), args.base],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        try:
            for tree, out in ((base, tmp / "out-base"), (ROOT, tmp / "out-new")):
                subprocess.run(
                    [sys.executable, "-c", RUNNER, str(tree), str(out), str(models)],
                    check=True,
                    env=dict(os.environ, TRANSFORMERS_VERBOSITY="error"),
                )
            return 1 if compare(tmp / "out-base", tmp / "out-new") else 0
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
