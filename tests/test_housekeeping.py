"""Cache locks that say what they wait for, and the cache commands that remove entries."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from gisp_engine import PruneConfig, prune
from gisp_engine.cli import main
from gisp_engine.core.errors import GispError
from gisp_engine.core.fsutil import atomic_write_json, file_lock, umask
from gisp_engine.evaluation import checks
from gisp_engine.jobs import background as jobs
from gisp_engine.jobs.housekeeping import plan_cleanup, remove_trajectory
from gisp_engine.pruning import cache


def test_a_lock_times_out_naming_what_and_who(tmp_path, capsys):
    path = tmp_path / "x.lock"
    held, release = threading.Event(), threading.Event()

    def hold():
        with file_lock(path, what="trajectory abc"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    try:
        start = time.monotonic()
        with pytest.raises(GispError) as err:
            with file_lock(path, what="trajectory abc", timeout=2.5):
                pass
        assert time.monotonic() - start >= 2.4
        assert "waiting for trajectory abc" in str(err.value) and f"pid {os.getpid()}" in str(err.value)
        assert "waiting for trajectory abc, held by pid" in capsys.readouterr().err
    finally:
        release.set()
        t.join()
    with file_lock(path, what="trajectory abc", timeout=1):  # free again once the holder left
        pass


def test_files_are_written_with_the_umask_read_once(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask()


def _job_folder(key: str, state: str, updated: float) -> None:
    folder = jobs.job_dir(key)
    folder.mkdir(parents=True)
    atomic_write_json(
        folder / "status.json", {"key": key, "state": state, "updated_unix": updated, "started_unix": updated}
    )


def test_cache_rm_and_prune(tiny_llama, data_dir, capsys):
    traj = prune(
        PruneConfig(
            model=str(tiny_llama),
            steps=2,
            max_sparsity=0.3,
            num_samples=4,
            seq_len=32,
            protect_first=1,
            dtype="float32",
            batch_size=4,
        )
    ).trajectory
    checks.remember_evaluation(
        traj, {"identity": {"task": "x", "step": 0}, "task": "x", "step": 0, "value": 1.0, "label": "x"}
    )
    now = time.time()
    _job_folder("old-done", "done", now - 10 * 86400)
    _job_folder("new-failed", "failed", now)

    plan = plan_cleanup(finished_jobs=True)
    assert {p.name for p, _ in plan.items} == {"old-done", "new-failed"} and plan.bytes > 0
    assert {p.name for p, _ in plan_cleanup(finished_jobs=True, older_than_days=5).items} == {"old-done"}
    # a dry run removes nothing; then the jobs go and the trajectory stays
    assert main(["cache", "prune", "--jobs", "--dry-run", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dry_run"] is True and jobs.job_dir("old-done").is_dir()
    assert main(["cache", "prune", "--jobs"]) == 0
    assert not jobs.job_dir("old-done").exists() and not jobs.job_dir("new-failed").exists()
    assert cache.lookup(traj.key) is not None

    # trajectories older than a number of days: this one is new
    assert plan_cleanup(finished_jobs=False, older_than_days=1).items == []
    assert {p.name for p, _ in plan_cleanup(finished_jobs=False, older_than_days=0, now=now + 3600).items} >= {traj.key}

    assert main(["cache", "rm", traj.key]) == 0
    assert "removed trajectory" in capsys.readouterr().out
    assert cache.lookup(traj.key) is None and not checks.evals_path(traj).exists()
    with pytest.raises(GispError, match="no trajectory"):
        remove_trajectory(traj.key)
    assert main(["cache", "prune", "--older-than", "-1"]) == 2
    assert "--older-than must be" in capsys.readouterr().err


def test_a_running_job_is_never_pruned(isolated_cache):
    import subprocess
    import sys

    # a live process that looks like a job (its command line names gisp_engine.jobs)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "gisp_engine.jobs"])
    try:
        _job_folder("running", "running", time.time() - 100 * 86400)
        (jobs.job_dir("running") / "pid").write_text(str(proc.pid))
        _job_folder("dead", "running", time.time() - 100 * 86400)
        (jobs.job_dir("dead") / "pid").write_text("999999")  # no such process: the job died, it is failed
        assert [p.name for p, _ in plan_cleanup(finished_jobs=True, older_than_days=1).items] == ["dead"]
        assert jobs.status("running").active
    finally:
        proc.kill()
        proc.wait()


def test_old_uploads_and_exports_are_pruned_and_uploads_wait_for_running_jobs(isolated_cache, capsys):
    import subprocess
    import sys

    from gisp_engine.core import serving
    from gisp_engine.data import uploads

    def task(first: int) -> bytes:  # a valid custom task file (the loader checks it on upload)
        return b"".join(
            b'{"query": "Q: %d + 2 = ?", "choices": ["%d", "%d"], "gold": 0}\n' % (n, n + 2, n + 3)
            for n in range(first, first + 40)
        )

    old_upload = Path(uploads.store_upload("old.jsonl", task(0), "tasks")).parent
    new_upload = Path(uploads.store_upload("new.jsonl", task(100), "tasks")).parent
    old_export = serving.exports_dir() / "old-export"
    old_export.mkdir(parents=True)
    (old_export / "model.safetensors").write_bytes(b"x" * 1000)
    month_ago = time.time() - 30 * 86400
    for path in (old_upload, old_export):
        os.utime(path, (month_ago, month_ago))

    planned = {p: why for p, why in plan_cleanup(finished_jobs=False, older_than_days=7).items}
    assert set(planned) == {old_upload, old_export}
    assert "tasks upload" in planned[old_upload] and planned[old_export].startswith("export")
    # a running job may still read an upload when it starts: uploads stay while one runs, exports do not
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "gisp_engine.jobs"])
    try:
        _job_folder("running", "running", time.time())
        (jobs.job_dir("running") / "pid").write_text(str(proc.pid))
        assert {p for p, _ in plan_cleanup(finished_jobs=False, older_than_days=7).items} == {old_export}
    finally:
        proc.kill()
        proc.wait()
    assert main(["cache", "prune", "--older-than", "7"]) == 0
    assert not old_upload.exists() and not old_export.exists() and new_upload.is_dir()
    assert [p.path for p in uploads.uploaded_files("tasks")] == [str(next(new_upload.iterdir()))]
