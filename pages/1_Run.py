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
from gisp_engine.data import BOS_POLICIES, CALIB_ALIASES, SAMPLINGS, uploads
from gisp_engine.jobs import background as jobs
from gisp_engine.model.structures import GQA_POLICIES, NORMALIZATIONS
from gisp_engine.pruning.config import METHODS, SCHEDULES, PruneConfig
from gisp_engine.pruning.objectives import OBJECTIVES

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
            model = st.text_input(
                "Model",
                d.model,
                help=f"{settings.DEFAULT_MODEL} (embedded), "
                + ("a model folder, or a hub id" if local else "or a hub id"),
            )
            method = st.selectbox(
                "Method",
                METHODS,
                index=METHODS.index(d.method),
                help="gisp re-scores at every step; the baselines rank once on the dense model",
            )
            objective = st.selectbox("Objective", sorted(OBJECTIVES), index=sorted(OBJECTIVES).index(d.objective))
            calib = st.selectbox(
                "Calibration data",
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
            sampling = st.selectbox(
                "Calibration sampling",
                SAMPLINGS,
                index=SAMPLINGS.index(d.sampling),
                help="perplexity objective. packed: documents shuffled, joined, the first tokens cut into windows. "
                "window: each sequence a random span of a random document longer than it (Wanda/SparseGPT/GISP "
                "reference loaders); sources of short documents (LAMBADA) are joined first",
            )
            bos = st.selectbox(
                "BOS token of the windows",
                BOS_POLICIES,
                index=BOS_POLICIES.index(d.bos),
                key="run_bos",
                help="perplexity objective. each: a BOS token starts every calibration window; stream: windows cut "
                "from one token stream (the papers' protocol); auto: each for families trained with one "
                "(Gemma 3), else stream",
            )
            tasks = st.text_input(
                "Tasks (task objectives)", d.tasks, help="comma-separated built-in task names, or cmqa for all seven"
            )
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
            calib_items = st.number_input(
                "Calibration items per task (margin)",
                min_value=0,
                value=0,
                step=8,
                key="run_calib_items",
                help="margin objective: this many items from every task's calibration pool (32 is a sound minimum). "
                "0: a token budget of calibration sequences x tokens, spread evenly over the tasks (few items "
                "of long-item tasks such as HellaSwag)",
            )
        with c2:
            num_samples = st.number_input("Calibration sequences", min_value=1, value=d.num_samples, step=1)
            seq_len = st.number_input("Tokens per sequence", min_value=2, value=d.seq_len, step=32)
            steps = st.number_input("Pruning steps (1 = one-shot)", min_value=1, value=d.steps, step=1)
            max_sparsity = st.number_input(
                "Maximum structural ratio",
                min_value=0.01,
                max_value=0.99,
                value=d.max_sparsity,
                step=0.05,
                format="%.2f",
                help="fraction of heads and channels removed at the last step",
            )
        with c3:
            schedule = st.selectbox("Schedule", SCHEDULES, index=SCHEDULES.index(d.schedule))
            gqa = st.selectbox(
                "GQA policy",
                GQA_POLICIES,
                index=GQA_POLICIES.index(d.gqa),
                help="query: query heads (paper); kv-group: a KV head with its query heads",
            )
            normalization = st.selectbox("Normalization", NORMALIZATIONS, index=NORMALIZATIONS.index(d.normalization))
            device = st.selectbox("Device", ["auto", "cpu", "cuda"], help="auto: the GPU when there is one")
        with st.expander("More settings"):
            e1, e2, e3 = st.columns(3)
            protect_first = e1.number_input(
                "Protected first layers (-1: 10% of layers)", min_value=-1, value=-1, step=1
            )
            protect_last = e1.number_input("Protected last layers", min_value=0, value=d.protect_last, step=1)
            seed = e2.number_input("Seed", value=d.seed, step=1)
            dtype = e2.selectbox("dtype", ["auto", "float32", "bfloat16", "float16"])
            align = e2.number_input(
                "MLP widths a multiple of (0: off)",
                min_value=0,
                value=0,
                step=32,
                key="run_align",
                help="every cut layer keeps a multiple of this many MLP channels at every step (64 suits llama.cpp's "
                "matmul kernels: odd widths can make a pruned model slower than the dense one). 0: any width",
            )
            batch_size = e3.number_input("Sequences per micro-batch (0: by device)", min_value=0, value=0, step=1)
            calib_tokens = e3.number_input(
                "Calibration tokens of task objectives (0: sequences x tokens)",
                min_value=0,
                value=0,
                step=1024,
                key="run_calib_tokens",
                help="margin and gsm8k objectives: their token budget",
            )
            save_scores = e3.checkbox("Keep every step's scores", value=d.save_scores)
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
            calib_items=(int(calib_items) or None) if objective == "margin" else None,
            calib_tokens=int(calib_tokens) or None,
            num_samples=int(num_samples),
            seq_len=int(seq_len),
            steps=int(steps),
            max_sparsity=float(max_sparsity),
            schedule=schedule,
            gqa=gqa,
            normalization=normalization,
            protect_first=None if protect_first < 0 else int(protect_first),
            protect_last=int(protect_last),
            seed=int(seed),
            batch_size=int(batch_size) or None,
            save_scores=save_scores,
            align=int(align) or None,
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
