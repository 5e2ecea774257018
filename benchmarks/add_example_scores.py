"""Give a shipped example every step's scores without changing it: measure them along the example's own removal
order (``gisp_engine.rescore_along``: its settings, each step removing what the example removed), check that the
order is the example's, and only then write the scores into it. Its trajectory.json keeps its key, request,
settings and step losses (the key its shipped sweeps in evaluations.json are filed under); evaluations.json is not
touched. Prints what it compared as JSON: per step, the share of the example's removal that the method would have
chosen itself on this engine (1.0: the same choice), and the largest gap between the losses measured now and then.

    GISP_CACHE_DIR=/tmp/regen-cache GISP_OFFLINE=1 OMP_NUM_THREADS=1 \
        python benchmarks/add_example_scores.py cache/examples/smollm2-135m-ppl-iterative

Why not re-run: an example made by an older engine (before the chunked LM-head loss) cannot be repeated bit for bit;
its dense loss differs by 1e-4, near-ties then fall the other way and an iterative run drifts (a re-run of the
10-step example removed 10,756 structures at other steps). (``GISP_CACHE_DIR`` elsewhere: link ``models/`` there
for the embedded model.) CPU, float32, as the examples were made: about 5 minutes for the 10-step SmolLM2 example.
"""

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gisp_engine import rescore_along  # noqa: E402
from gisp_engine.core.progress import TqdmProgress  # noqa: E402
from gisp_engine.pruning.trajectory import Trajectory  # noqa: E402

folder = Path(sys.argv[1])
example = Trajectory.load(folder)
started = time.time()
run = rescore_along(example, progress=TqdmProgress(), device="cpu", dtype="float32")
wall = time.time() - started
same = np.array_equal(run.removal_step, example.removal_step)
loss_gap = max(abs(a.loss - b.loss) for a, b in zip(run.steps, example.steps))
agreement = run.meta["followed"]["agreement"]
report = {
    "example": folder.name,
    "removal_order_same": bool(same),
    "agreement_per_step": agreement,
    "max_loss_gap": loss_gap,
    "wall_s": round(wall, 1),
}
print(json.dumps(report))
if not same:
    sys.exit(f"{folder.name}: the removal order followed is not the example's: scores NOT added")
example.scores = run.scores
example.meta.pop("scores_added", None)
example.meta["scores_added"] = {
    "how": "measured along this trajectory's own removal order with its settings (gisp_engine.rescore_along); "
    "key, request, settings and step losses are those of the original run",
    "agreement_per_step": agreement,
    "versions": run.meta["versions"],
    "wall_time_s": round(wall, 1),
    "max_loss_gap": loss_gap,
}
staged = Path(tempfile.mkdtemp(prefix="gisp-scores-")) / folder.name
shutil.rmtree(staged, ignore_errors=True)
example.save(staged)
for name in ("structures.safetensors", "trajectory.json"):
    shutil.copyfile(staged / name, folder / name)
back = Trajectory.load(folder)
assert np.array_equal(back.removal_step, example.removal_step) and back.key == example.key
print(f"{folder.name}: scores added, key {back.key}")
