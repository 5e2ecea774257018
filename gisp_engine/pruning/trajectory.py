"""The GISP trajectory: when each structure was removed, and what each step looked like.

On disk a trajectory is a folder (written atomically: staged, then renamed) with

* ``trajectory.json``: format and version, model (id, family, geometry, weights SHA-256),
  every setting, the objective and its calibration slice, software versions, wall time,
  one record per step (``step``, ``structural_ratio``, ``param_sparsity``, ``loss``,
  ``kept_params``), and the SHA-256 of the array file;
* ``structures.safetensors``: one entry per structure (layer-major, heads then channels):
  ``layer`` (int32), ``kind`` (int8, 0 = head, 1 = channel), ``index`` (int32),
  ``removal_step`` (int32, -1 = never removed) and ``score`` (float32, the normalized
  score in the last step the structure was scored); ``scores`` unless the run opted out
  (steps x structures, NaN where not scored: row ``t`` holds what step ``t + 1`` ranked, measured on
  the model after ``t`` steps), written as float16 with ``scores_scale`` (float32, one power of two per
  step: the stored value times its row's scale is the score; files without it hold float32 scores),
  and method-specific ``extra.*``
  arrays (FLAP: ``extra.input_mean_o``, ``extra.input_mean_down``, layers x features).

Nothing is pickled. Because removal is permanent, the keep-mask at step ``t`` is
``removal_step == -1 or removal_step > t``: every step is a prefix of the same order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import GispError
from ..core.fsutil import atomic_write_json, staging_dir
from ..model.adapters import Geometry
from ..model.structures import StructureSpace

FORMAT = "gisp-trajectory"
VERSION = 1
META_FILE = "trajectory.json"
ARRAYS_FILE = "structures.safetensors"
SPARSITY_EPS = 1e-9


@dataclass
class StepRecord:
    step: int
    structural_ratio: float
    param_sparsity: float
    loss: float
    kept_params: int
    removed: int = 0  # structures removed at this step
    wall_s: float = 0.0  # time since the run started, when this step's state was reached
    metrics: dict = field(default_factory=dict)


@dataclass
class Trajectory:
    meta: dict
    geometry: Geometry
    gqa: str
    removal_step: np.ndarray  # int32, (N,)
    score: np.ndarray  # float32, (N,)
    steps: list[StepRecord]
    scores: np.ndarray | None = None  # float32, (T, N), optional
    path: Path | None = None
    #: method-specific arrays (e.g. FLAP's calibration input means for bias compensation)
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        self.space = StructureSpace(self.geometry, self.gqa)

    # ---- queries ---------------------------------------------------------------------------
    @property
    def key(self) -> str:
        return self.meta.get("key", "")

    @property
    def num_steps(self) -> int:
        """Pruning steps T (the step records run from 0, dense, to T)."""
        return len(self.steps) - 1

    @property
    def max_param_sparsity(self) -> float:
        return self.steps[-1].param_sparsity

    def check_step(self, step: int) -> int:
        if not isinstance(step, (int, np.integer)) or not 0 <= step <= self.num_steps:
            raise GispError(f"step {step} is outside this trajectory's steps 0..{self.num_steps}")
        return int(step)

    def keep_mask(self, step: int) -> np.ndarray:
        """Structures alive after ``step`` pruning steps (step 0 is the dense model)."""
        step = self.check_step(step)
        return (self.removal_step == -1) | (self.removal_step > step)

    def step_at_sparsity(self, sparsity: float) -> int:
        """The last step whose parameter sparsity is at or below ``sparsity``."""
        top = self.max_param_sparsity
        if not 0.0 <= sparsity <= top + SPARSITY_EPS:
            raise GispError(
                f"sparsity {sparsity:g} is outside 0 .. {top:.4f}, "
                "the largest parameter sparsity this trajectory reached"
            )
        best = 0
        for rec in self.steps:
            if rec.param_sparsity <= sparsity + SPARSITY_EPS:
                best = rec.step
        return best

    def step_nearest_sparsity(self, sparsity: float) -> int:
        """The step whose parameter sparsity is nearest ``sparsity`` (how papers pick their 20/30/40/50%)."""
        self.step_at_sparsity(min(sparsity, self.max_param_sparsity))  # range check
        return min(self.steps, key=lambda r: (abs(r.param_sparsity - sparsity), r.step)).step

    def kept(self, step: int) -> dict:
        """Kept query heads, KV heads and channels per layer, and the parameter figures at ``step``."""
        keep = self.keep_mask(step)
        rec = self.steps[step]
        return {
            "step": step,
            "structural_ratio": rec.structural_ratio,
            "param_sparsity": rec.param_sparsity,
            "kept_params": rec.kept_params,
            "layers": [lk.to_dict() for lk in self.space.layer_keep(keep)],
        }

    def name(self, structure_id: int) -> tuple[int, str, int]:
        return self.space.name(structure_id)

    def summary(self) -> dict:
        return {
            "path": str(self.path) if self.path else None,
            "key": self.key,
            "model": self.meta.get("model", {}).get("id"),
            "objective": self.meta.get("objective", {}).get("objective"),
            "gqa": self.gqa,
            "steps": [asdict(r) for r in self.steps],
            "max_param_sparsity": self.max_param_sparsity,
            "wall_time_s": self.meta.get("wall_time_s"),
        }

    # ---- disk ------------------------------------------------------------------------------
    def save(self, folder: Path) -> Path:
        """Write atomically into ``folder`` (replacing what is there); return the folder."""
        from safetensors.numpy import save as st_save

        arrays = {
            "layer": self.space.layer.astype(np.int32),
            "kind": self.space.kind.astype(np.int8),
            "index": self.space.index.astype(np.int32),
            "removal_step": self.removal_step.astype(np.int32),
            "score": self.score.astype(np.float32),
        }
        if self.scores is not None:
            arrays["scores"], arrays["scores_scale"] = encode_scores(self.scores)
        for name, value in self.extras.items():
            arrays[f"extra.{name}"] = np.ascontiguousarray(value, dtype=np.float32)
        blob = st_save(arrays)
        meta = dict(self.meta)
        meta.update(
            format=FORMAT,
            version=VERSION,
            geometry=self.geometry.to_dict(),
            gqa=self.gqa,
            structures={
                "count": int(self.space.size),
                "head_units_per_layer": int(self.space.head_units),
                "channels_per_layer": int(self.geometry.intermediate_size),
                "order": "layer-major; within a layer the head units, then the channels",
                "file": ARRAYS_FILE,
                "sha256": hashlib.sha256(blob).hexdigest(),
            },
            steps=[asdict(r) for r in self.steps],
        )
        folder = Path(folder)
        with staging_dir(folder) as tmp:
            (tmp / ARRAYS_FILE).write_bytes(blob)
            atomic_write_json(tmp / META_FILE, meta)
        self.meta, self.path = meta, folder
        return folder

    @classmethod
    def load(cls, folder: Path | str) -> "Trajectory":
        """Read and validate a trajectory folder; anything wrong is a GispError naming the file."""
        from safetensors.numpy import load as st_load

        folder = Path(folder)
        if folder.is_file() and folder.name == META_FILE:
            folder = folder.parent
        meta_path, arrays_path = folder / META_FILE, folder / ARRAYS_FILE
        if not meta_path.is_file():
            raise GispError(f"{folder} is not a trajectory (no {META_FILE})")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise GispError(f"corrupt trajectory {meta_path}: {str(exc)[:200]}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise GispError(f"{meta_path} is not a GISP trajectory (format is not {FORMAT!r})")
        if meta.get("version") != VERSION:
            raise GispError(
                f"{meta_path}: trajectory format version {meta.get('version')!r}, this engine reads {VERSION}"
            )
        try:
            blob = arrays_path.read_bytes()
        except OSError:
            raise GispError(f"corrupt trajectory {folder}: {ARRAYS_FILE} is missing") from None
        try:
            declared = meta["structures"]["sha256"]
            if hashlib.sha256(blob).hexdigest() != declared:
                raise GispError(f"corrupt trajectory {arrays_path}: its SHA-256 does not match {META_FILE}")
            arrays = st_load(blob)
            geometry = Geometry(**meta["geometry"])
            gqa = meta["gqa"]
            _check_geometry(geometry, gqa, len(arrays["removal_step"]), folder)
            steps = [StepRecord(**r) for r in meta["steps"]]
            traj = cls(
                meta=meta,
                geometry=geometry,
                gqa=gqa,
                removal_step=arrays["removal_step"].astype(np.int32),
                score=arrays["score"].astype(np.float32),
                steps=steps,
                scores=decode_scores(arrays.get("scores"), arrays.get("scores_scale")),
                path=folder,
                extras={k.removeprefix("extra."): v for k, v in arrays.items() if k.startswith("extra.")},
            )
        except GispError:
            raise
        except Exception as exc:  # any structural problem in the files
            raise GispError(f"corrupt trajectory {folder}: {type(exc).__name__}: {exc}") from None
        traj._validate(arrays)
        return traj

    def _validate(self, arrays: dict) -> None:
        s, n = self.space, self.space.size
        where = f"corrupt trajectory {self.path}"
        for name, ref in (("layer", s.layer), ("kind", s.kind), ("index", s.index)):
            if name not in arrays or arrays[name].shape != (n,) or not np.array_equal(arrays[name], ref):
                raise GispError(f"{where}: column {name!r} does not match the model geometry")
        if self.removal_step.shape != (n,) or self.score.shape != (n,):
            raise GispError(f"{where}: removal_step/score must have {n} entries")
        if not self.steps or [r.step for r in self.steps] != list(range(len(self.steps))):
            raise GispError(f"{where}: steps must be numbered 0..T")
        t = self.num_steps
        if ((self.removal_step < -1) | (self.removal_step == 0) | (self.removal_step > t)).any():
            raise GispError(f"{where}: removal steps must be -1 or 1..{t}")
        if self.scores is not None and self.scores.shape != (t, n):
            raise GispError(f"{where}: scores must be ({t}, {n})")
        scale = arrays.get("scores_scale")
        if scale is not None and (scale.shape != (t,) or not (np.isfinite(scale) & (scale > 0)).all()):
            raise GispError(f"{where}: scores_scale must hold {t} positive numbers")
        for rec in self.steps:
            keep = self.keep_mask(rec.step)
            if abs(s.param_sparsity(keep) - rec.param_sparsity) > 1e-6:
                raise GispError(f"{where}: step {rec.step} parameter sparsity does not match its structures")


SCORE_TOP_EXPONENT = 15  # a step's largest score is stored below 2**15: 29 binades above float16's smallest normal


def encode_scores(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every step's scores as float16 (enough to draw and rank them: 11 significant bits) and one power-of-two
    scale per step, so that scores of any magnitude (1e-6 is typical) keep float16's full precision."""
    scores = np.asarray(scores, dtype=np.float32)
    with np.errstate(all="ignore"):
        top = np.nanmax(np.where(np.isfinite(scores), np.abs(scores), np.nan), axis=1, initial=0.0)
    exponent = np.where(top > 0, np.ceil(np.log2(np.where(top > 0, top, 1.0))), 0.0) - SCORE_TOP_EXPONENT
    scale = np.exp2(exponent).astype(np.float32)
    return (scores / scale[:, None]).astype(np.float16), scale


def decode_scores(stored: np.ndarray | None, scale: np.ndarray | None) -> np.ndarray | None:
    """The float32 scores of ``encode_scores``' arrays (or of a file written before it: float32, no scale)."""
    if stored is None:
        return None
    values = stored.astype(np.float32)
    if scale is not None:
        values *= scale.astype(np.float32)[:, None]
    return values


def _check_geometry(g: Geometry, gqa: str, count: int, folder: Path) -> None:
    """Sanity of the declared geometry before any array is built from it."""
    fields = g.to_dict().values()
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < 10**7 for v in fields):
        raise GispError(f"corrupt trajectory {folder}: geometry must hold positive whole numbers")
    if g.num_heads % g.num_kv_heads or gqa not in ("query", "kv-group"):
        raise GispError(f"corrupt trajectory {folder}: inconsistent heads or GQA policy")
    units = g.num_heads if gqa == "query" else g.num_kv_heads
    if g.num_layers * (units + g.intermediate_size) != count:
        raise GispError(f"corrupt trajectory {folder}: {count} structures do not match the declared geometry")
