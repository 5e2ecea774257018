"""Run: prune a model in a background process, follow it live, cancel it.

The run is a process of its own (``gisp_engine.jobs``), registered under its request key, so
reloading this page or opening it in a second tab shows the same run, and asking again for
the same settings returns it (or the cached trajectory) instead of starting another.
"""

import time

import streamlit as st

import explorer_ui as ui
from gisp_engine.core import serving, settings
from gisp_engine.core.errors import GispError
from gisp_engine.data import uploads
from gisp_engine.data.text import CALIB_ALIASES
from gisp_engine.jobs import background as jobs
from gisp_engine.pruning.config import OPTIONS, PruneConfig

ui.page_setup("Run")
st.title("Run a pruning trajectory")
st.caption(
    "The run happens outside this page, in a background process: you can leave, reload or open a second tab. "
    "The same settings are never run twice: a finished trajectory is answered from the cache, and a cancelled "
    "run started again continues from its last finished step."
)

d = PruneConfig()
HUB = "hf:"  # the calibration list's entry for a hub dataset, named in the field below it


def _calibration(picked: str, hub_spec: str, upload) -> str:
    """The calibration source: an upload (stored in the cache), an alias, a hub spec, or a file from the list."""
    if upload is not None:
        return uploads.store_upload(upload.name, upload.getvalue(), "calib")
    if picked in CALIB_ALIASES:
        return picked
    if picked == HUB:
        if not hub_spec.strip().startswith("hf:") or len(hub_spec.strip()) < 4:
            raise GispError("name the hub dataset as hf:DATASET[:CONFIG[:SPLIT[:FIELD]]]")
        return hub_spec.strip()
    return uploads.checked_pick(picked, "calib")


def _tasks(typed: str, picked: list[str], upload) -> str:
    """Built-in names typed, task files picked from the list, an uploaded task file: one comma-separated list."""
    names = uploads.typed_tasks(typed) + [uploads.checked_pick(p, "tasks") for p in picked]
    if upload is not None:
        names.append(uploads.store_upload(upload.name, upload.getvalue(), "tasks"))
    return ",".join(names)


def _show_plan(config: PruneConfig) -> None:
    from gisp_engine.pruning.plan_estimate import GIB, check_request, dry_run
    from gisp_engine.pruning.pruner import plan

    check_request(config)
    result = dry_run(plan(config))
    m = result.memory
    (st.success if result.fits else st.error)(
        f"Peak memory about **{m.peak / GIB:.2f} GiB** on {m.device} ({m.dtype}); {result.free_bytes / GIB:.2f} GiB "
        "free: " + ("it fits." if result.fits else f"it does not fit. Would fit: {result.suggestion}")
    )
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Cache", "holds it" if result.cached else "not yet", help=f"key {result.key}")
    c2.metric("Scored structures", f"{result.scored_structures:,}", help=f"of {result.structures:,}")
    c3.metric("Tokens per step", f"{result.tokens_per_step:,}", help=f"{result.micro_batches} micro-batches")
    c4.metric(
        "First step",
        f"~{result.time['first_step_s']:.0f} s" if result.time else "not measured yet",
        help="from the speed the last real run of this model on this device recorded",
    )
    st.code(ui.public(result.text()), language=None)


def _settings_form() -> None:
    local = serving.current_mode().name == "local"
    calib_picks = {p.path: p.label for p in uploads.choices("calib")}
    calib_options = list(CALIB_ALIASES) + list(calib_picks) + [HUB]
    task_picks = {p.path: p.label for p in uploads.choices("tasks")}
    upload_mb = max(1, int(settings.max_upload_mb()))
    with st.form("run_settings"):
        c1, c2, c3 = st.columns(3)
        with c1:
            model = ui.option_input(
                "model",
                help=f"{settings.DEFAULT_MODEL} (embedded), "
                + ("a model folder, or a hub id" if local else "or a hub id"),
            )
            method = ui.option_input("method")
            objective = ui.option_input("objective")
            calib = st.selectbox(
                OPTIONS["calib"][1].label,
                calib_options,
                index=calib_options.index(d.calib),
                key="run_calib",
                format_func=lambda c: calib_picks.get(c, c if c != HUB else "a hub dataset (below)"),
                help=f"perplexity objective: {', '.join(CALIB_ALIASES)}, a file of the data "
                "folder's calib/, an earlier upload, or a hub dataset",
            )
            hub_spec = st.text_input(
                "Hub calibration dataset",
                HUB,
                key="run_hub_calib",
                help="when 'a hub dataset' is chosen above: hf:DATASET[:CONFIG[:SPLIT[:FIELD]]]",
            )
            calib_upload = st.file_uploader(
                "…or upload calibration text",
                type=["jsonl", "txt"],
                key="run_calib_upload",
                max_upload_size=upload_mb,
                help="JSON lines with a 'text' field, or plain text (one document a line); kept in the cache under "
                "its content hash, and listed above from then on",
            )
            sampling = ui.option_input("sampling")
            bos = ui.option_input("bos")
            tasks = ui.option_input("tasks")
            custom_tasks = st.multiselect(
                "Custom task files",
                list(task_picks),
                key="run_custom_tasks",
                format_func=task_picks.get,
                help="task objectives: files of the data folder's tasks/, or earlier uploads",
            )
            task_upload = st.file_uploader(
                "…or upload a custom task file",
                type=["jsonl"],
                key="run_task_upload",
                max_upload_size=upload_mb,
                help='JSON lines of {"query", "choices", "gold"} records (optionally "continuation")',
            )
            calib_items = ui.option_input("calib_items")
        with c2:
            num_samples = ui.option_input("num_samples")
            seq_len = ui.option_input("seq_len")
            steps = ui.option_input("steps")
            max_sparsity = ui.option_input("max_sparsity")
        with c3:
            schedule = ui.option_input("schedule")
            gqa = ui.option_input("gqa")
            normalization = ui.option_input("normalization")
            device = ui.option_input("device", choices=ui.DEVICES)
        with st.expander("More settings"):
            e1, e2, e3 = st.columns(3)
            protect_first = ui.option_input("protect_first", e1)
            protect_last = ui.option_input("protect_last", e1)
            shrink = ui.option_input("shrink", e1)
            seed = ui.option_input("seed", e2)
            dtype = ui.option_input("dtype", e2)
            align = ui.option_input("align", e2)
            batch_size = ui.option_input("batch_size", e3)
            calib_tokens = ui.option_input("calib_tokens", e3)
            save_scores = ui.option_input("save_scores", e3)
        b1, b2 = st.columns(2)
        submitted = b1.form_submit_button("Start the run", type="primary")
        planned = b2.form_submit_button(
            "Plan (dry run)",
            help="what the run would do and need, without loading weights or starting anything: "
            "the cache key, structures, micro-batches, peak memory part by part, time per step",
        )
    if not (submitted or planned):
        return
    config = None
    # a refused request says why and leaves the list of runs below in place
    with ui.guard("The run was not started: " if submitted else "No plan: ", stop=False):
        config = PruneConfig(
            model=model.strip() if local else uploads.typed_model(model),
            method=method,
            objective=objective,
            calib=_calibration(calib, hub_spec, calib_upload),
            sampling=sampling,
            bos=bos if objective == "perplexity" else "auto",
            tasks=_tasks(tasks, custom_tasks, task_upload),
            calib_items=calib_items if objective == "margin" else None,
            calib_tokens=calib_tokens,
            num_samples=num_samples,
            seq_len=seq_len,
            steps=steps,
            max_sparsity=max_sparsity,
            schedule=schedule,
            gqa=gqa,
            normalization=normalization,
            protect_first=protect_first,
            protect_last=protect_last,
            seed=seed,
            batch_size=batch_size,
            shrink=shrink,
            save_scores=save_scores,
            align=align,
            device=device,
            dtype=dtype,
        )
    if config is None:
        return
    if planned:
        with ui.guard("No plan: ", stop=False), st.spinner("Planning (no weights are loaded)…"):
            _show_plan(config)
        return
    asked = time.time()
    with ui.guard("The run was not started: ", stop=False), st.spinner("Checking the settings…"):
        job = jobs.submit(config)
        st.session_state["run_last_key"] = job.key
        if job.cache_hit:
            st.success(f"Answered from the cache: this trajectory exists already (`{job.key}`).")
            ui.remember_trajectory(job.trajectory)
        elif job.started_unix and job.started_unix < asked - 1:
            st.info(f"The same run is already going (`{job.key}`): following it below.")
        elif job.resumed_from:
            st.success(
                f"Resumed run `{job.key}` in the background from step {job.resumed_from} of {job.total}: "
                "the steps before it were finished by an earlier run of these settings."
            )
        else:
            st.success(f"Started run `{job.key}` in the background.")


if ui.can_change():
    _settings_form()
else:
    ui.viewer_note("Starting a run")


def _format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "estimating…"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _show(job: jobs.JobStatus) -> None:
    cfg = job.config
    with st.container(border=True):
        st.markdown(
            f"**`{job.key}`** · {cfg.get('model')} · {cfg.get('method', 'gisp')} · {cfg.get('objective')} · "
            f"{cfg.get('steps')} steps to "
            f"structural ratio {cfg.get('max_sparsity')}"
            + (f" · MLP widths multiples of {cfg['align']}" if cfg.get("align") else "")
            + f" · **{job.state}**"
        )
        if job.active:
            ui.job_progress(job)
            m1, m2, m3, m4 = st.columns(4)
            m1.metric("Steps done", f"{job.step} of {job.total}")
            m2.metric("Calibration loss", "—" if job.loss is None else f"{job.loss:.4f}")
            m3.metric("Parameter sparsity", "—" if job.param_sparsity is None else f"{job.param_sparsity:.1%}")
            m4.metric("Time left", _format_eta(job.eta_s), help="from the mean time of the finished steps")
            ui.cancel_button(job)
            return
        ui.job_outcome(job, f"Done in {job.elapsed_s or 0:.0f} s: {job.trajectory}", "The run", "Cancelled.")
        if job.state == "done" and st.button("Explore it", key=f"explore_{job.key}"):
            ui.remember_trajectory(job.trajectory)
            st.switch_page("pages/2_Explore.py")


def _runs() -> None:
    rows = jobs.list_jobs(kind="prune")
    if not rows:
        st.write("No runs yet.")
        return
    active = [j for j in rows if j.active]
    finished = [j for j in rows if not j.active][:5]
    for job in active + finished:
        _show(job)
    if not active and st.session_state.get("run_polling"):
        st.session_state["run_polling"] = False
        st.rerun()  # stop polling: nothing is running any more


def _runs_polling() -> None:
    _runs()


st.subheader("Runs")
st.session_state["run_polling"] = bool(jobs.list_jobs(active_only=True, kind="prune"))
if st.session_state["run_polling"]:
    st.fragment(run_every=1.0)(_runs_polling)()
else:
    st.fragment(_runs)()
