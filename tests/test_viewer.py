"""Serving the explorer to a room: the viewer mode off localhost, no server paths from a browser, the jobs limit.

The app's mode follows Streamlit's ``server.address`` (set here as ``--server.address`` would); a viewer shows
what the cache holds and the engine refuses whatever starts work or writes. Every page is opened through
``app.py`` as in test_app.py.
"""

from __future__ import annotations

import time
import zipfile
from pathlib import Path

import pytest
from apptest import no_errors, open_page
from browsing import serve
from streamlit import config as st_config
from tiny import cache_dir

from gisp_engine import PruneConfig
from gisp_engine.core import serving, settings
from gisp_engine.core.errors import GispError
from gisp_engine.data import uploads
from gisp_engine.jobs import background as jobs

GOOD_TASK = b"".join(
    b'{"query": "Q: %d + 2 = ?", "choices": ["%d", "%d"], "gold": 0}\n' % (n, n + 2, n + 3) for n in range(40)
)


@pytest.fixture(scope="module")
def tiny_run(tiny_models, data_dir, tmp_path_factory) -> Path:
    """One small trajectory (two steps) of a tiny model."""
    from gisp_engine import prune

    with cache_dir(tmp_path_factory.mktemp("viewer-cache")):
        return prune(
            PruneConfig(
                model=str(tiny_models[("llama", True)]),
                steps=2,
                max_sparsity=0.3,
                num_samples=4,
                seq_len=32,
                protect_first=1,
                dtype="float32",
                batch_size=4,
            )
        ).path


@pytest.fixture
def run(tiny_run, isolated_cache) -> str:
    """The tiny trajectory, copied into this test's cache (so the app lists it)."""
    import shutil

    dest = isolated_cache / "trajectories" / tiny_run.name
    shutil.copytree(tiny_run, dest)
    return str(dest)


@pytest.fixture
def address():
    """Set the address the app listens on (as ``streamlit run --server.address``); restored afterwards."""
    before = st_config.get_option("server.address"), st_config.get_option("client.showErrorDetails")

    def listen_on(value: str | None) -> None:
        st_config.set_option("server.address", value)

    yield listen_on
    st_config.set_option("server.address", before[0])
    st_config.set_option("client.showErrorDetails", before[1])
    serving.set_mode(serving.LOCAL)  # the engine in this process runs as the command line's again


def cache_files(cache: Path) -> set[str]:
    """Every file of the cache but the chart component's (written once, read-only from then on)."""
    return {
        str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() and p.relative_to(cache).parts[0] != "ui"
    }


def sidebar_text(at) -> str:
    return " ".join(e.value for e in list(at.sidebar.info) + list(at.sidebar.warning) + list(at.sidebar.caption))


def buttons(at) -> set[str]:
    return {b.label for b in at.button}


def _finished_job(key: str = "0123456789abcdef", state: str = "done", pid: int | None = None) -> str:
    folder = jobs.job_dir(key)
    folder.mkdir(parents=True)
    config = {"model": "some-model", "method": "gisp", "objective": "perplexity", "steps": 2, "max_sparsity": 0.3}
    jobs._write_status(
        folder,
        jobs.JobStatus(
            key=key,
            state=state,
            config=config,
            started_unix=time.time(),
            pid=pid,
            trajectory="/somewhere",
            elapsed_s=3.0,
        ),
    )
    return key


# ---- the mode ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "where, local",
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("", False),
        (None, False),
        ("192.168.1.20", False),
        ("::", False),
        ("lab.example.org", False),
    ],
)
def test_the_mode_follows_the_listen_address(where, local, monkeypatch):
    monkeypatch.delenv("GISP_ALLOW_CHANGES", raising=False)
    mode = serving.mode_for(where)
    assert (mode.name, mode.writes) == (("local", True) if local else ("viewer", False))
    monkeypatch.setenv("GISP_ALLOW_CHANGES", "1")
    assert serving.mode_for(where).name == ("local" if local else "shared")


def test_a_viewer_starts_and_writes_nothing(run, address, isolated_cache, monkeypatch):
    monkeypatch.delenv("GISP_ALLOW_CHANGES", raising=False)
    address("0.0.0.0")
    _finished_job()  # something the Home page's cleanup would delete
    before = cache_files(isolated_cache)
    at = open_page(None, select=run)
    no_errors(at)
    assert "Viewer mode" in sidebar_text(at) and "0.0.0.0" in sidebar_text(at)
    assert "Clean up" not in buttons(at) and not any(b.label.startswith("Convert") for b in at.button)
    assert Path(run).name in set(at.dataframe[0].value["name"])  # the cache is still listed

    pages = {
        "pages/1_Run.py": "Start the run",
        "pages/3_Evaluate.py": "Evaluate dense and pruned",
        "pages/5_Export.py": "Export",
        "pages/6_Choose.py": "Sweep every step in the background",
    }
    for page, action in pages.items():
        at.switch_page(page).run()
        no_errors(at)
        labels = buttons(at)
        assert action not in labels and "Generate (greedy)" not in labels, (page, labels)
        assert not at.text_input and not at.get("file_uploader"), page  # nothing to type a path into
        assert any("not available in viewer mode" in i.value for i in at.info), page
    assert cache_files(isolated_cache) == before  # no job, evaluation, upload or export written

    # called anyway, the engine refuses
    assert serving.current_mode().name == "viewer"
    with pytest.raises(GispError, match="viewer"):
        jobs.submit(PruneConfig(model="smollm2-135m"))
    with pytest.raises(GispError, match="viewer"):
        uploads.store_upload("t.jsonl", GOOD_TASK, "tasks")
    from gisp_engine import Trajectory, export_elastic, export_gguf, export_subnetwork, load_model
    from gisp_engine.pruning.subnetwork import recorded_model

    traj = Trajectory.load(run)
    loaded = load_model(recorded_model(traj), dtype="float32")  # not even the weights' SHA-256 memo is written
    out = isolated_cache / "exports" / "refused"
    for export, args in ((export_subnetwork, (1, out)), (export_elastic, (out,)), (export_gguf, (1, out))):
        with pytest.raises(GispError, match="an export is refused: this app is a viewer"):
            export(loaded, traj, *args)
    assert not out.exists(), out
    assert cache_files(isolated_cache) == before, cache_files(isolated_cache) ^ before


def test_allow_changes_turns_writes_back_on(address, monkeypatch):
    monkeypatch.setenv("GISP_ALLOW_CHANGES", "1")
    address("0.0.0.0")
    at = open_page("pages/1_Run.py")
    no_errors(at)
    assert "Changes allowed on a network" in sidebar_text(at)
    assert "Start the run" in buttons(at)
    # served to a network, the model is named, never a folder of the server
    at.text_input[0].set_value(str(settings.PROJECT_ROOT))
    at.button[1].click().run()  # Plan (dry run)
    assert any("not given as a folder of the server" in e.value for e in at.error)
    assert not any(
        str(settings.PROJECT_ROOT.parent) in e.value.replace(str(settings.PROJECT_ROOT), "") for e in at.error
    )


# ---- export: into the cache, then a download ------------------------------------------------------
def test_export_is_a_download_that_loads_after_unpacking(run, tmp_path):
    from gisp_engine.export.hf import load_pruned

    at = open_page("pages/5_Export.py", select=run)
    no_errors(at)
    assert not at.text_input  # no output folder to type
    at.select_slider[0].set_value(2).run()
    at.button[0].click().run()
    no_errors(at)
    summary = at.session_state["export_last"]
    archive = Path(summary["download"])
    assert archive.suffix == ".zip" and archive.parent == serving.exports_dir()
    [button] = at.get("download_button")
    assert archive.name in button.label
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp_path / "unpacked")
    pruned = load_pruned(tmp_path / "unpacked" / Path(summary["path"]).name)  # verifies every file
    assert pruned.manifest["trajectory"]["step"] == 2
    assert any(f'load_pruned("{Path(summary["path"]).name}")' in c.value for c in at.code)


# ---- uploads --------------------------------------------------------------------------------------
def _margin_plan(at, upload: tuple[str, bytes]) -> None:
    from apptest import fill_run_form

    fill_run_form(at, at.session_state["tiny_model"], 0.3)
    next(s for s in at.selectbox if s.label == "Objective").set_value("margin")
    next(t for t in at.text_input if t.label == "Tasks (task objectives)").set_value("")
    at.get("file_uploader")[1].set_value((upload[0], upload[1], "application/jsonl"))
    at.button[1].click().run()  # Plan (dry run): reads the tasks, loads no weights


def test_an_uploaded_task_file_is_checked_stored_and_used(tiny_llama, isolated_cache, monkeypatch):
    at = open_page("pages/1_Run.py")
    at.session_state["tiny_model"] = str(tiny_llama)
    _margin_plan(at, ("bad.jsonl", GOOD_TASK + b'{"query": "Q", "choices": ["a"\n'))
    assert any("bad.jsonl:41: malformed JSON" in e.value for e in at.error), [e.value for e in at.error]
    assert not any(str(isolated_cache) in e.value for e in at.error)  # the upload's name, not where it was checked
    assert uploads.uploaded_files("tasks") == []

    _margin_plan(at, ("mine.jsonl", GOOD_TASK))
    no_errors(at)
    [stored] = uploads.uploaded_files("tasks")
    assert Path(stored.path).read_bytes() == GOOD_TASK and stored.label.startswith("uploaded: mine.jsonl")
    # the plan is of a request whose task is the stored upload (its cache key says so)
    from gisp_engine.pruning.pruner import plan

    asked = PruneConfig(
        model=str(tiny_llama),
        objective="margin",
        tasks=stored.path,
        num_samples=4,
        seq_len=32,
        steps=2,
        max_sparsity=0.3,
        batch_size=4,
    )
    assert next(m for m in at.metric if m.label == "Cache").proto.help == f"key {plan(asked).key}"
    at.run()  # listed for the next run
    assert "uploaded: mine.jsonl" in " ".join(at.multiselect(key="run_custom_tasks").options)

    monkeypatch.setenv("GISP_MAX_UPLOAD_MB", "0.0001")  # about 100 bytes
    at.run()  # the uploader is drawn with the limit (its identity changes with it)
    _margin_plan(at, ("big.jsonl", GOOD_TASK * 2))
    assert any("an upload may be at most" in e.value for e in at.error), [e.value for e in at.error]


# ---- path tricks ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "a/b.jsonl",
        "..",
        ".hidden.jsonl",
        "C:\\x.jsonl",
        "t.jsonl\0.txt",
        "no-suffix",
    ],
)
def test_names_with_paths_are_refused(name):
    with pytest.raises(GispError):
        uploads.safe_name(name, "tasks")


def test_path_tricks_are_refused(tmp_path, isolated_cache, monkeypatch):
    outside = tmp_path / "secret.jsonl"
    outside.write_bytes(GOOD_TASK)
    data = tmp_path / "data"
    (data / "tasks").mkdir(parents=True)
    (data / "tasks" / "ok.jsonl").write_bytes(GOOD_TASK)
    (data / "tasks" / "link.jsonl").symlink_to(outside)  # a link out of the data folder
    monkeypatch.setenv("GISP_DATA_DIR", str(data))
    up = uploads.uploads_dir("tasks") / "0123456789abcdef"
    up.mkdir(parents=True)
    (up / "link.jsonl").symlink_to(outside)  # a link out of the cache

    assert [p.label for p in uploads.choices("tasks")] == ["data folder: tasks/ok.jsonl"]
    assert uploads.checked_pick(str(data / "tasks" / "ok.jsonl"), "tasks").endswith("ok.jsonl")
    for path in (
        outside,
        data / "tasks" / "link.jsonl",
        up / "link.jsonl",
        "/etc/passwd",
        data / "tasks" / ".." / ".." / "secret.jsonl",
        "tasks/ok.jsonl",
    ):
        with pytest.raises(GispError, match="not a file of the data folder or an upload"):
            uploads.checked_pick(str(path), "tasks")
    for typed in ("../x.jsonl", "/etc/passwd", "piqa,~/t.jsonl", "my.jsonl"):
        with pytest.raises(GispError, match="picked from the list or uploaded"):
            uploads.typed_tasks(typed)
    assert uploads.typed_tasks("piqa, boolq") == ["piqa", "boolq"]
    for model in ("/etc", "../models", "~/m", str(tmp_path)):
        with pytest.raises(GispError, match="not given as a folder"):
            uploads.typed_model(model)
    assert uploads.typed_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"

    exports = serving.exports_dir()
    exports.mkdir(parents=True)
    (exports / "out.gguf").symlink_to(outside)
    for path in (exports / "out.gguf", outside, exports / ".." / "uploads"):
        with pytest.raises(GispError, match="nothing to download"):
            serving.downloadable(path)
    with pytest.raises(GispError, match="nothing to download"):
        serving.export_archive(tmp_path)

    shown = serving.public_message(
        f"cannot read {outside}: line 2; the cache is {isolated_cache}/x, see https://huggingface.co/docs/x"
    )
    assert str(tmp_path) not in shown.replace(str(isolated_cache), "") and "…/secret.jsonl: line 2" in shown
    assert f"{isolated_cache}/x" in shown and "https://huggingface.co/docs/x" in shown


# ---- the limit on background jobs ----------------------------------------------------------------------
def test_a_job_beyond_the_limit_is_refused_with_a_message(tiny_llama, monkeypatch):
    import subprocess
    import sys

    from apptest import fill_run_form

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "gisp_engine.jobs"])
    try:
        running = _finished_job("fedcba9876543210", state="running", pid=sleeper.pid)
        monkeypatch.delenv("GISP_MAX_JOBS", raising=False)
        assert settings.max_jobs() >= 1
        monkeypatch.setenv("GISP_MAX_JOBS", "1")
        at = open_page("pages/1_Run.py")
        fill_run_form(at, str(tiny_llama), 0.3)
        at.button[0].click().run()
        said = [e.value for e in at.error]
        assert any(
            f"already running (prune {running})" in e and "the limit is 1 at once (GISP_MAX_JOBS)" in e for e in said
        ), said
        assert [j.key for j in jobs.list_jobs()] == [running]
    finally:
        sleeper.kill()
        sleeper.wait()
    monkeypatch.setenv("GISP_MAX_JOBS", "0")
    with pytest.raises(GispError, match="GISP_MAX_JOBS must be a positive number"):
        settings.max_jobs()


# ---- in a real browser ------------------------------------------------------------------------------
def test_a_viewer_in_chromium_offers_nothing_to_type_or_start(browser, isolated_cache, tmp_path, monkeypatch):
    """``streamlit run app.py --server.address 0.0.0.0``, as ``GISP_ADDRESS=0.0.0.0 make app`` runs it."""
    monkeypatch.delenv("GISP_ALLOW_CHANGES", raising=False)
    with serve(
        isolated_cache, tmp_path / "streamlit.log", "--server.fileWatcherType", "none", "--server.address", "0.0.0.0"
    ) as (url, _):
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.get_by_text("Viewer mode").wait_for(timeout=120_000)
        assert page.get_by_text("Clean up").count() == 0
        for name, action in (("Run", "Start the run"), ("Export", "Export"), ("Evaluate", "Evaluate dense and pruned")):
            page.goto(f"{url}/{name}")
            page.get_by_text("not available in viewer mode").first.wait_for(timeout=120_000)
            assert page.get_by_role("button", name=action, exact=True).count() == 0, name
            assert page.locator('[data-testid="stTextInput"], [data-testid="stFileUploader"]').count() == 0, name
            assert page.locator('[data-testid="stException"]').count() == 0, name
        page.close()
    assert not (isolated_cache / "jobs").exists() and not (isolated_cache / "exports").exists()
