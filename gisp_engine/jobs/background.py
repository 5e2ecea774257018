"""Pruning runs in the background: one detached process per request, its state in a JSON file.

The app must not prune inside its script (a rerun or a closed tab would lose the work), so a
run is a process of its own::

    python -m gisp_engine.jobs run cache/jobs/<key>

which calls :func:`gisp_engine.pruning.pruner.prune` with a progress callback that rewrites
``cache/jobs/<key>/status.json`` atomically (state, step, total, loss, sparsity, start time
and an estimate of the time left from the step timings). The folder is named by the request
key (``plan(config).key``), so reloading the page, a second tab or a second identical request
finds the same run instead of starting another one, and a request whose trajectory is already
cached is answered from the cache without a run. Cancelling terminates the run's process
group; the engine checkpoints every step, so asking again for a cancelled (or crashed) run
continues it from its last finished step. ``gisp jobs list`` and ``gisp jobs cancel KEY`` do the same from a
shell.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core import serving, settings
from ..core.errors import GispError
from ..core.fsutil import atomic_write_json, ensure_writable_dir, file_lock
from ..core.progress import ProgressEvent
from ..pruning import cache
from ..pruning.config import PruneConfig

ACTIVE = ("starting", "running")
FINISHED = ("done", "failed", "cancelled")
REQUEST_FILE, STATUS_FILE, PID_FILE, LOG_FILE = "request.json", "status.json", "pid", "log.txt"
START_GRACE_S = 30.0  # a job may take this long to write its first status after being spawned
WRITE_EVERY_S = 0.5  # progress inside a step is written at most this often

_children: dict[int, subprocess.Popen] = {}  # processes this process started (reaped on look-up)


@dataclass
class JobStatus:
    key: str
    state: str  # starting | running | done | failed | cancelled
    config: dict = field(default_factory=dict)
    pid: int | None = None
    phase: str = ""
    message: str = ""
    step: int = 0  # pruning steps finished
    total: int = 0  # pruning steps in all
    fraction: float = 0.0  # of the whole run, from finished steps and the batches of the current one
    loss: float | None = None
    param_sparsity: float | None = None
    structural_ratio: float | None = None
    started: str | None = None  # ISO time
    started_unix: float | None = None
    updated_unix: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None  # estimated seconds left (None until a step has been timed)
    step_times_s: list[float] = field(default_factory=list)  # wall time of each finished step
    trajectory: str | None = None  # folder of the result when done (a sweep: the trajectory swept)
    cache_hit: bool = False
    error: str | None = None
    kind: str = "prune"  # prune | sweep
    # a run that continues an earlier one of the same request: the pruning steps its checkpoint held, or the
    # points the earlier sweep had finished, when this one started (None: started from the beginning)
    resumed_from: int | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def to_dict(self) -> dict:
        return asdict(self)


# ---- where jobs live -----------------------------------------------------------------------
def jobs_dir() -> Path:
    return settings.cache_dir() / "jobs"


def job_dir(key: str) -> Path:
    return jobs_dir() / key


def _read_status(folder: Path) -> JobStatus | None:
    try:
        data = json.loads((folder / STATUS_FILE).read_text(encoding="utf-8"))
        known = {f for f in JobStatus.__dataclass_fields__}
        return JobStatus(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError):
        return None


def _write_status(folder: Path, status: JobStatus) -> None:
    status.updated_unix = time.time()
    atomic_write_json(folder / STATUS_FILE, status.to_dict())


def _read_pid(folder: Path) -> int | None:
    try:
        return int((folder / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    """Whether ``pid`` is a live (not zombie) process running a job."""
    if not pid:
        return False
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _children.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():  # Linux: rule out zombies and a reused pid
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            return False
        if state in ("Z", "X"):
            # exiting; a multi-threaded process can show Z before it can be reaped, so keep
            # tracking our own child until poll() has really reaped it
            if child is not None and child.poll() is not None:
                _children.pop(pid, None)
            return False
        return b"gisp_engine.jobs" in cmdline
    return True


def status(key: str) -> JobStatus | None:
    """The job for request ``key`` (None if there never was one); a job whose process died is failed."""
    folder = job_dir(key)
    current = _read_status(folder)
    if current is None or not current.active:
        return current
    pid = current.pid = current.pid or _read_pid(folder)
    if _alive(pid):
        return current
    started = current.started_unix or 0.0
    if current.state == "starting" and pid is None and time.time() - started < START_GRACE_S:
        return current
    again = _read_status(folder)  # it may have finished, or been started again, between the two reads
    if again is not None and (not again.active or _run_id(again) != _run_id(current)):
        return again  # never overwrite a newer run with the end of the one read first
    current.state = "failed"
    current.error = f"the run stopped unexpectedly; its log is {folder / LOG_FILE}"
    current.eta_s = None
    _write_status(folder, current)
    return current


def _run_id(job: JobStatus) -> tuple:
    """What tells one run of a request from the next: each start writes a new start time."""
    return job.started_unix, job.started


def list_jobs(active_only: bool = False, kind: str | None = None) -> list[JobStatus]:
    """Jobs in the registry (of one ``kind``, prune or sweep, if given), newest first."""
    root = jobs_dir()
    if not root.is_dir():
        return []
    rows = [status(p.name) for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    rows = [r for r in rows if r is not None and (r.active or not active_only) and (kind is None or r.kind == kind)]
    return sorted(rows, key=lambda r: r.started_unix or 0.0, reverse=True)


# ---- starting and cancelling ----------------------------------------------------------------
def submit(config: PruneConfig) -> JobStatus:
    """Start a background run for ``config``, or return what already answers it.

    Bad settings raise :class:`GispError` here (``plan`` validates them without loading weights).
    A cached trajectory is returned as a finished job with ``cache_hit``; a run of the same
    request that is still going is returned as it is.
    """
    from ..pruning.pruner import plan

    serving.require_changes("starting a run")  # a viewer app: before anything is read or written
    the_plan = plan(config)
    key = the_plan.key
    hit = cache.lookup(key)
    if hit is not None:
        return JobStatus(
            key=key,
            state="done",
            config=config.to_dict(),
            trajectory=str(hit.path),
            cache_hit=True,
            step=hit.num_steps,
            total=hit.num_steps,
            fraction=1.0,
            message="answered from the cache",
        )
    return _start(key, config.to_dict(), total=config.steps)


def _checkpoint_step(key: str) -> int | None:
    """Pruning steps the engine's checkpoint of request ``key`` holds (what a new run continues from)."""
    from ..pruning.pruner import LoopState

    done = LoopState.finished_steps(cache.partial_path(key), key)
    return done or None


def submit_sweep(trajectory, request, model: str | None = None, device: str = "auto", dtype: str = "auto") -> JobStatus:
    """Start a background sweep of ``trajectory`` (a ``SweepRequest``), or return the one going.

    Every point is remembered as it is finished, so asking again for a cancelled or crashed sweep
    continues it; a sweep whose points are all remembered finishes at once without loading a model.
    """
    import hashlib

    from ..choose.sweep import check_cost, parse_checks, parse_steps
    from ..data.tasks import is_custom_task, load_task
    from ..evaluation.checks import trajectory_id
    from ..pruning.subnetwork import recorded_model

    serving.require_changes("starting a sweep")  # a viewer app: before anything is read or written
    request = dataclasses.replace(
        request,
        tasks=parse_checks(request.tasks, allow_none=request.cost is not None),
        steps=parse_steps(request.steps, trajectory),
    )
    check_cost(trajectory, request.cost)  # a llama.cpp cost without the runtime (or of a bad GGUF) starts nothing
    for task in request.tasks:  # a custom task file is read whole now: a bad line is refused before any process
        if is_custom_task(task):
            load_task(task)
    body = {
        "kind": "sweep",
        "trajectory": str(trajectory.path),
        "trajectory_id": trajectory_id(trajectory),
        "request": request.to_dict(),
        "model": model or recorded_model(trajectory),
        "device": device,
        "dtype": dtype,
    }
    key = "sweep-" + hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    total = len(request.steps) * (len(request.tasks) + (request.cost is not None))
    return _start(key, body, total=total, kind="sweep", trajectory=body["trajectory"])


def _start(key: str, config: dict, **fields) -> JobStatus:
    """Start the job ``key`` for ``config`` unless one is going already (its status is returned then).

    At most ``settings.max_jobs()`` jobs run at once: a request beyond them is refused with the running ones
    named (one start at a time, so two cannot both pass the count).
    """
    root = ensure_writable_dir(jobs_dir())
    with (
        file_lock(root / ".start.lock", what="the start of a job", timeout=60),
        file_lock(root / f".{key}.lock", what=f"job {key}", timeout=60),
    ):
        current = status(key)
        if current is not None and current.active:
            return current
        _refuse_beyond_limit()
        if fields.get("kind") == "sweep":  # every finished point is remembered: an earlier sweep's count stands
            resumed_from = current.step if current is not None and current.state != "done" and current.step else None
        else:  # the engine continues from its checkpoint of the last finished step
            resumed_from = _checkpoint_step(key)
        folder = job_dir(key)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in (PID_FILE, LOG_FILE):
            (folder / stale).unlink(missing_ok=True)
        now = time.time()
        atomic_write_json(folder / REQUEST_FILE, {"key": key, "config": config})
        started = JobStatus(
            key=key,
            state="starting",
            config=config,
            message="starting",
            started=_iso(now),
            started_unix=now,
            resumed_from=resumed_from,
            **fields,
        )
        _write_status(folder, started)
        return _spawn(folder, started)


def _refuse_beyond_limit() -> None:
    limit = settings.max_jobs()
    running = list_jobs(active_only=True)
    if len(running) >= limit:
        names = ", ".join(f"{j.kind} {j.key}" for j in running)
        raise GispError(
            f"{len(running)} background job{'s' if len(running) > 1 else ''} already running ({names}): "
            f"the limit is {limit} at once (GISP_MAX_JOBS); start this one when one has finished, "
            "or cancel one"
        )


def _spawn(folder: Path, started: JobStatus) -> JobStatus:
    """Start ``python -m gisp_engine.jobs run FOLDER`` detached, in its own process group."""
    env = dict(os.environ)
    env["GISP_CACHE_DIR"] = str(settings.cache_dir())
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(settings.PROJECT_ROOT), env.get("PYTHONPATH")]))
    with open(folder / LOG_FILE, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gisp_engine.jobs", "run", str(folder)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: cancel ends it and everything it started
        )
    _children[proc.pid] = proc
    (folder / PID_FILE).write_text(str(proc.pid))
    started.pid = proc.pid
    return started


def cancel(key: str, wait_s: float = 10.0) -> JobStatus | None:
    """Terminate the run of request ``key`` (its whole process group) and mark it cancelled."""
    folder = job_dir(key)
    current = status(key)
    if current is None or not current.active:
        return current
    serving.require_changes("cancelling a background job")
    pid = _read_pid(folder) or current.pid
    if pid:
        _signal_group(pid, signal.SIGTERM)
        if not _wait_gone(pid, time.time() + wait_s):
            _signal_group(pid, signal.SIGKILL)  # whatever ignored SIGTERM
            _wait_gone(pid, time.time() + 5.0)
        child = _children.pop(pid, None)
        if child is not None and child.poll() is None:
            child.wait(timeout=5)
    after = _read_status(folder) or current
    if after.active:
        after.state, after.eta_s, after.message = "cancelled", None, "cancelled"
        _write_status(folder, after)
    return after


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_gone(pid: int, deadline: float) -> bool:
    """Wait until the job and every process of its group have exited (helpers may outlive it briefly)."""
    while time.time() < deadline:
        leader = _alive(pid)  # also reaps our own child once it has exited
        if not leader and not _group_alive(pid):
            return True
        time.sleep(0.1)
    return False


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the job is its own group leader (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def _iso(unix: float) -> str:
    return _dt.datetime.fromtimestamp(unix, _dt.timezone.utc).isoformat(timespec="seconds")


# ---- inside the job process ----------------------------------------------------------------
class StatusWriter:
    """The progress callback of a background run: folds engine events into ``status.json``."""

    def __init__(self, folder: Path, status: JobStatus, clock=time.time):
        self.folder, self.status, self.clock = folder, status, clock
        self.step_started: float | None = None  # when the step now being computed began
        self.last_write = 0.0

    def write(self, force: bool = False) -> None:
        now = self.clock()
        s = self.status
        s.elapsed_s = round(now - (s.started_unix or now), 2)
        s.eta_s = self.eta(now)
        if force or now - self.last_write >= WRITE_EVERY_S:
            _write_status(self.folder, s)
            self.last_write = now

    def eta(self, now: float) -> float | None:
        """Seconds left: mean time of the finished steps times the steps left, less the current one's progress."""
        s = self.status
        if s.state == "done":
            return 0.0
        if s.state != "running" or not s.total:
            return None
        within = 0.0
        if s.total and s.fraction:
            within = max(0.0, s.fraction * s.total - s.step)
        if s.step_times_s:
            per_step = sum(s.step_times_s) / len(s.step_times_s)
        elif within > 0.05 and self.step_started is not None:
            per_step = (now - self.step_started) / within  # first step, from its batches
        else:
            return None
        # one more loss evaluation follows the last step; it costs about one forward pass of a step
        left = (s.total - s.step - within) * per_step
        return round(max(0.0, left), 1)

    def __call__(self, event: ProgressEvent) -> None:
        s, now = self.status, self.clock()
        s.phase = event.phase
        if event.message:
            s.message = event.message
        if event.phase == "step":
            if event.done > 0 and self.step_started is not None:
                s.step_times_s.append(round(now - self.step_started, 3))
            s.step, s.total = event.done, event.total
            s.fraction = event.done / event.total if event.total else 0.0
            self.step_started = now
            info = event.info or {}
            s.loss = info.get("loss", s.loss)
            s.param_sparsity = info.get("params", s.param_sparsity)
            s.structural_ratio = info.get("ratio", s.structural_ratio)
            s.message = f"step {event.done} of {event.total} done" if event.done else "pruning"
            self.write(force=True)
        elif event.phase == "sweep":
            if event.done > s.step and self.step_started is not None:
                s.step_times_s.append(round((now - self.step_started) / (event.done - s.step), 3))
            if event.done != s.step or self.step_started is None:
                self.step_started = now
            s.step, s.total = event.done, event.total
            s.fraction = event.done / event.total if event.total else 0.0
            s.message = f"{event.done} of {event.total} points: {event.message}"
            self.write(force=True)
        elif event.phase == "eval" and s.kind == "sweep" and s.total:
            s.fraction = (s.step + (event.done / event.total if event.total else 0.0)) / s.total
            self.write()
        elif event.phase == "score" and event.total_steps:
            step = (event.step or 1) - 1
            s.fraction = (step + (event.done / event.total if event.total else 0.0)) / event.total_steps
            s.message = f"step {event.step} of {event.total_steps}: batch {event.done} of {event.total}"
            self.write()
        else:
            if event.phase == "final":
                s.message = "loss of the last subnetwork"
            self.write(force=True)


def run(folder: Path) -> int:
    """The body of ``python -m gisp_engine.jobs run FOLDER``: prune, reporting into the folder."""
    from ..pruning.pruner import prune

    folder = Path(folder)
    request = json.loads((folder / REQUEST_FILE).read_text(encoding="utf-8"))
    current = _read_status(folder) or JobStatus(key=request["key"], state="starting", config=request["config"])
    now = time.time()
    current.state, current.pid, current.message = "running", os.getpid(), "loading the model"
    current.error = None  # this run's own outcome: nothing an earlier run (or a poll's verdict on it) left
    current.started_unix = current.started_unix or now
    current.started = current.started or _iso(now)
    writer = StatusWriter(folder, current)
    writer.write(force=True)

    def on_term(signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        if request["config"].get("kind") == "sweep":
            current.kind = "sweep"
            _sweep(request["config"], writer)
            outcome = None
        else:
            # resume: a run of this request that was cancelled or died continues from its last finished step
            outcome = prune(PruneConfig(**request["config"]), progress=writer, resume=True)
    except KeyboardInterrupt:
        current.state, current.message, current.eta_s = "cancelled", "cancelled", None
        _write_status(folder, current)
        return 130
    except GispError as exc:
        current.state, current.error, current.eta_s = "failed", str(exc), None
        _write_status(folder, current)
        print(f"gisp: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a crash is reported in the page, the traceback goes to the log
        import traceback

        traceback.print_exc()
        current.state, current.eta_s = "failed", None
        current.error = f"{type(exc).__name__}: {exc} (traceback in {folder / LOG_FILE})"
        _write_status(folder, current)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    current.state, current.eta_s, current.fraction = "done", 0.0, 1.0
    if outcome is not None:
        current.trajectory, current.cache_hit = str(outcome.trajectory.path), outcome.cache_hit
    current.step = current.total
    current.message = "done"
    writer.write(force=True)
    return 0


def _sweep(body: dict, progress) -> None:
    from ..choose.sweep import SweepRequest, run_sweep
    from ..model.loading import load_model, resolve_device, resolve_dtype
    from ..pruning.trajectory import Trajectory

    trajectory = Trajectory.load(body["trajectory"])
    dtype = str(resolve_dtype(body["dtype"], resolve_device(body["device"]))).removeprefix("torch.")
    run_sweep(
        trajectory,
        lambda: load_model(body["model"], body["device"], body["dtype"]),
        SweepRequest.from_dict(body["request"]),
        progress,
        copy_model=False,
        dtype=dtype,
    )


def main(argv: list[str] | None = None) -> int:
    """The worker's entry point, ``python -m gisp_engine.jobs run JOB_DIR``, as ``submit`` starts it (the liveness
    check knows a job's process by this module's name in its command line). From a shell: ``gisp jobs``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) == 2 and args[0] == "run":
        return run(Path(args[1]))
    print(
        "usage: python -m gisp_engine.jobs run JOB_DIR (started by the app; from a shell: gisp jobs list|cancel)",
        file=sys.stderr,
    )
    return 2
