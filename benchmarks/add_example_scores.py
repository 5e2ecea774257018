"""Give a shipped example every step's scores without changing it: re-run its settings with scores kept, check that
the removal order is identical, and only then write the scores into the example. Its trajectory.json keeps its key,
request and settings (the key its shipped sweeps in evaluations.json are filed under); evaluations.json is not
touched. Prints what it compared (removal order, largest loss and score gaps, wall time) as JSON.

    GISP_CACHE_DIR=/tmp/regen-cache GISP_OFFLINE=1 flock /tmp/gisp-heavy.lock \
        python benchmarks/add_example_scores.py cache/examples/smollm2-135m-ppl-iterative

(``GISP_CACHE_DIR`` elsewhere: the re-run's own cache entry is not wanted; link ``models/`` there for the
embedded model.) CPU, float32, as the examples were made: about 10 minutes for the 10-step SmolLM2 example.
"""
import json
import shutil
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gisp_engine import PruneConfig, prune  # noqa: E402
from gisp_engine.progress import TqdmProgress  # noqa: E402
from gisp_engine.trajectory import Trajectory  # noqa: E402

folder = Path(sys.argv[1])
example = Trajectory.load(folder)
names = {f.name for f in fields(PruneConfig)}
settings = {k: v for k, v in example.meta["settings"].items() if k in names}
settings.update(save_scores=True, device="cpu", dtype="float32")
started = time.time()
run = prune(PruneConfig(**settings), use_cache=False, progress=TqdmProgress()).trajectory
wall = time.time() - started
same = np.array_equal(run.removal_step, example.removal_step)
loss_gap = max(abs(a.loss - b.loss) for a, b in zip(run.steps, example.steps))
score_gap = float(np.nanmax(np.abs(run.score - example.score) / np.abs(example.score)))
report = {"example": folder.name, "removal_order_same": bool(same), "max_loss_gap": loss_gap,
          "max_rel_last_score_gap": score_gap, "wall_s": round(wall, 1), "rerun_key": run.key}
print(json.dumps(report))
if not same:
    diff = int((run.removal_step != example.removal_step).sum())
    sys.exit(f"{folder.name}: removal order differs in {diff} structures: scores NOT added")
example.scores = run.scores
example.meta["scores_added"] = {
    "how": "re-run with the same settings and save_scores; removal order checked identical before the scores were "
           "added; key, request and settings are those of the original run",
    "rerun_key": run.key, "versions": run.meta["versions"], "wall_time_s": round(wall, 1),
    "max_loss_gap": loss_gap}
staged = Path(tempfile.mkdtemp(prefix="gisp-scores-")) / folder.name
shutil.rmtree(staged, ignore_errors=True)
example.save(staged)
for name in ("structures.safetensors", "trajectory.json"):
    shutil.copyfile(staged / name, folder / name)
back = Trajectory.load(folder)
assert np.array_equal(back.removal_step, run.removal_step) and back.key == json.loads((staged / "trajectory.json").read_text())["key"]
print(f"{folder.name}: scores added, key {back.key}")
