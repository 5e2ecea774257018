"""Background runs: one process per request key, live status, time left, cancel, failure reporting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gisp_engine import PruneConfig
from gisp_engine.core.errors import GispError
from gisp_engine.core.progress import ProgressEvent
from gisp_engine.jobs import background as jobs
from gisp_engine.pruning import cache


def _config(model, **kw) -> PruneConfig:
    base = dict(
        model=str(model),
        num_samples=4,
        seq_len=32,
        steps=3,
        max_sparsity=0.3,
        protect_first=1,
        dtype="float32",
        batch_size=4,
    )
    base.update(kw)
    return PruneConfig(**base)


def _wait(key: str, until, timeout: float = 240.0) -> jobs.JobStatus:
    deadline = time.time() + timeout
    while time.time() < deadline:
        current = jobs.status(key)
        if current is not None and until(current):
            return current
        time.sleep(0.2)
    raise AssertionError(f"job {key} did not get there: {jobs.status(key)}")


@pytest.fixture(autouse=True)
def cancel_leftovers():
    yield
    for job in jobs.list_jobs(active_only=True):
        jobs.cancel(job.key)


def test_status_writer_estimates_time_left_from_step_timings(tmp_path):
    clock = [100.0]
    status = jobs.JobStatus(key="k", state="running", started_unix=100.0, total=4)
    writer = jobs.StatusWriter(tmp_path, status, clock=lambda: clock[0])
    writer(ProgressEvent("step", 0, 4, 0, 4, "pruning"))
    assert status.eta_s is None  # nothing timed yet
    clock[0] = 110.0
    writer(ProgressEvent("step", 1, 4, 1, 4, "pruning", {"loss": 2.5, "params": 0.1, "ratio": 0.08}))
    assert status.step == 1 and status.loss == 2.5 and status.param_sparsity == 0.1
    assert status.eta_s == pytest.approx(30.0)  # three steps of 10 s left
    clock[0] = 130.0
    writer(ProgressEvent("step", 2, 4, 2, 4, "pruning"))
    assert status.step_times_s == [10.0, 20.0] and status.eta_s == pytest.approx(30.0)  # 2 x mean 15 s
    clock[0] = 137.5
    writer(ProgressEvent("score", 1, 2, 3, 4))  # half of step 3 done
    assert status.fraction == pytest.approx(2.5 / 4) and status.eta_s == pytest.approx(22.5)
    on_disk = json.loads((tmp_path / jobs.STATUS_FILE).read_text())
    assert on_disk["step"] == 2 and on_disk["state"] == "running"


def test_first_step_estimate_comes_from_its_batches(tmp_path):
    clock = [0.0]
    status = jobs.JobStatus(key="k", state="running", started_unix=0.0, total=2)
    writer = jobs.StatusWriter(tmp_path, status, clock=lambda: clock[0])
    writer(ProgressEvent("step", 0, 2, 0, 2, "pruning"))
    clock[0] = 5.0
    writer(ProgressEvent("score", 1, 4, 1, 2))  # a quarter of step 1 in 5 s: 20 s per step
    assert status.eta_s == pytest.approx(35.0)


def test_run_in_background_is_shared_by_identical_requests_then_cached(tiny_llama, data_dir):
    config = _config(tiny_llama)
    first = jobs.submit(config)
    assert first.state == "starting" and first.pid
    second = jobs.submit(_config(tiny_llama))  # a second tab asking for the same thing
    assert second.key == first.key and (second.cache_hit or second.pid == first.pid)
    assert [j.key for j in jobs.list_jobs()] == [first.key]

    done = _wait(first.key, lambda s: not s.active)
    assert done.state == "done", done.error
    assert done.step == done.total == 3 and done.fraction == 1.0 and done.eta_s == 0.0
    assert len(done.step_times_s) == 3 and all(t > 0 for t in done.step_times_s)
    assert done.loss is not None and 0 < done.param_sparsity < 1
    assert cache.lookup(first.key) is not None and done.trajectory == str(cache.path_for(first.key))

    again = jobs.submit(_config(tiny_llama))
    assert again.cache_hit and again.state == "done" and again.trajectory == done.trajectory


def test_cancel_terminates_the_process_group(tiny_llama, data_dir):
    # long enough to be cancelled while it runs
    job = jobs.submit(_config(tiny_llama, steps=400, max_sparsity=0.45, num_samples=16, seq_len=64))
    _wait(job.key, lambda s: s.state == "running" and s.step >= 1)
    assert jobs._alive(job.pid)
    after = jobs.cancel(job.key)
    assert after.state == "cancelled"
    assert not jobs._alive(job.pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(job.pid, 0)  # nothing of its group is left
    assert cache.lookup(job.key) is None
    assert jobs.status(job.key).state == "cancelled"

    # asked again, the run continues from the engine's checkpoint of its last finished step
    done_before = json.loads((cache.partial_path(job.key) / "state.json").read_text())["done"]
    assert done_before >= 1
    again = jobs.submit(_config(tiny_llama, steps=400, max_sparsity=0.45, num_samples=16, seq_len=64))
    assert again.key == job.key and again.pid != job.pid
    assert again.resumed_from == done_before and again.error is None  # it says where it continues from
    resumed = _wait(job.key, lambda s: s.state == "running" and s.step >= done_before)
    assert len(resumed.step_times_s) < resumed.step  # the steps before the checkpoint were not run again
    assert jobs.cancel(job.key).state == "cancelled"


def test_bad_settings_are_refused_before_any_process(tiny_llama):
    with pytest.raises(GispError, match="--max-sparsity"):
        jobs.submit(_config(tiny_llama, max_sparsity=1.5))
    assert jobs.list_jobs() == []


def test_a_run_that_dies_is_reported_failed(tiny_llama, data_dir):
    key = "deadbeef"
    folder = jobs.job_dir(key)
    folder.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (folder / jobs.PID_FILE).write_text(str(dead.pid))
    (folder / jobs.STATUS_FILE).write_text(json.dumps({"key": key, "state": "running", "pid": dead.pid}))
    current = jobs.status(key)
    assert current.state == "failed" and "stopped unexpectedly" in current.error


def test_an_engine_error_inside_the_run_is_reported(tmp_path):
    folder = jobs.job_dir("badrequest")
    folder.mkdir(parents=True)
    config = _config(tmp_path / "gone")  # planned fine once, the model is gone by the time the job runs
    (folder / jobs.REQUEST_FILE).write_text(json.dumps({"key": "badrequest", "config": config.to_dict()}))
    assert jobs.run(folder) == GispError.exit_code
    current = jobs.status("badrequest")
    assert current.state == "failed" and "does not exist" in current.error


def test_a_poll_racing_a_restart_leaves_the_new_run_alone(monkeypatch):
    """A poll that read a dead run's status must not write its failure over the run started meanwhile."""
    key = "racing"
    folder = jobs.job_dir(key)
    folder.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    jobs._write_status(folder, jobs.JobStatus(key=key, state="running", pid=dead.pid, started_unix=time.time() - 60))
    restarted = jobs.JobStatus(key=key, state="starting", started_unix=time.time(), message="started again")
    alive = jobs._alive

    def restart_meanwhile(pid):  # another thread or tab starts the request again while this poll looks
        jobs._write_status(folder, restarted)
        return alive(pid)

    monkeypatch.setattr(jobs, "_alive", restart_meanwhile)
    seen = jobs.status(key)
    on_disk = json.loads((folder / jobs.STATUS_FILE).read_text())
    assert on_disk["state"] == "starting" and on_disk["error"] is None and on_disk["message"] == "started again"
    assert seen.state == "starting" and seen.error is None


def test_a_run_starts_from_a_fresh_error_state(tiny_llama, data_dir):
    """Whatever an earlier run (or a poll's verdict on it) left in the status, a run reports only its own outcome."""
    from gisp_engine import prune
    from gisp_engine.pruning.pruner import plan

    config = _config(tiny_llama, steps=2)
    prune(config)  # the job below is answered from the cache at once
    key = plan(config).key
    folder = jobs.job_dir(key)
    folder.mkdir(parents=True)
    (folder / jobs.REQUEST_FILE).write_text(json.dumps({"key": key, "config": config.to_dict()}))
    stale = jobs.JobStatus(
        key=key,
        state="failed",
        error="the run stopped unexpectedly; its log is log.txt",
        started_unix=time.time(),
        config=config.to_dict(),
    )
    jobs._write_status(folder, stale)
    assert jobs.run(folder) == 0
    done = jobs.status(key)
    assert done.state == "done" and done.error is None


def test_a_sweep_started_again_says_how_far_the_earlier_one_got(monkeypatch, tiny_llama):
    spawned = []
    monkeypatch.setattr(jobs, "_spawn", lambda folder, started: spawned.append(started) or started)
    key = "sweep-resumed"
    folder = jobs.job_dir(key)
    folder.mkdir(parents=True)
    jobs._write_status(
        folder,
        jobs.JobStatus(
            key=key, state="cancelled", kind="sweep", step=7, total=22, started_unix=time.time() - 100, error=None
        ),
    )
    again = jobs._start(key, {"kind": "sweep"}, total=22, kind="sweep")
    assert again.state == "starting" and again.resumed_from == 7 and again.error is None and spawned
    jobs._write_status(folder, jobs.JobStatus(key=key, state="done", kind="sweep", step=22, total=22))
    assert jobs._start(key, {"kind": "sweep"}, total=22, kind="sweep").resumed_from is None  # all remembered: anew


def test_gisp_jobs_lists_and_cancels_from_a_shell(isolated_cache, capsys):
    from gisp_engine.cli import main
    from gisp_engine.core.fsutil import atomic_write_json

    def folder(key: str, state: str, started: float) -> Path:
        path = jobs.job_dir(key)
        path.mkdir(parents=True)
        atomic_write_json(
            path / "status.json",
            {"key": key, "state": state, "started_unix": started, "step": 1, "total": 4, "message": "pruning"},
        )
        return path

    # a live process that looks like a job (its command line names gisp_engine.jobs)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "gisp_engine.jobs"], start_new_session=True
    )
    try:
        folder("finished", "done", time.time() - 60)
        (folder("live", "running", time.time()) / "pid").write_text(str(proc.pid))
        assert main(["jobs", "list"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert [line.split()[0] for line in out] == ["live", "finished"] and "running" in out[0]
        assert main(["jobs", "list", "--active", "--json"]) == 0
        assert [j["key"] for j in json.loads(capsys.readouterr().out)["jobs"]] == ["live"]
        assert main(["jobs", "cancel", "live"]) == 0
        assert capsys.readouterr().out.strip() == "live: cancelled"
        assert proc.wait(timeout=20) is not None and jobs.status("live").state == "cancelled"
        assert main(["jobs", "cancel", "nope"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no background job 'nope'" in err[0]
    finally:
        proc.kill()
        proc.wait()
    # the library's own entry point only starts a worker
    done = subprocess.run([sys.executable, "-m", "gisp_engine.jobs", "list"], capture_output=True, text=True)
    assert done.returncode == 2 and "gisp jobs list" in done.stderr
