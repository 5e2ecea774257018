"""Export: write the chosen subnetwork into the cache (through the engine), offer it as a download, show how to load it.

A browser never names a folder: the export goes to the cache's ``exports/``, and the download is the .gguf file or
a zip of the folder. A viewer exports nothing; it may download the exports the cache already holds.
"""

from pathlib import Path

import streamlit as st

import explorer_ui as ui
from gisp_engine.core import serving
from gisp_engine.core.progress import ProgressEvent
from gisp_engine.evaluation import checks
from gisp_engine.export.hf import export_subnetwork
from gisp_engine.pruning.subnetwork import recorded_checkpoint_dtype

ui.page_setup("Export")
st.title("Export the chosen subnetwork")


path, view, traj = ui.picked_trajectory()
model = ui.model_id(traj)
step = ui.step_slider(path, view, "export_step")
st.caption(
    f"Step {step}: parameter sparsity {view.param_sparsity[step]:.1%}, structural ratio "
    f"{view.structural_ratio[step]:.1%}, {view.kept_params[step] / 1e6:.2f} M of {view.total_params / 1e6:.2f} M "
    f"decoder linear weights; base model `{model}`."
)

THIS_STEP, UNIFORM, EVERY_STEP = "this step", "this step, uniform widths", "every step in one folder"
kind = st.radio(
    "What to write",
    [THIS_STEP, UNIFORM, EVERY_STEP],
    horizontal=True,
    key="export_kind",
    captions=[
        "exactly the trajectory's subnetwork at this step",
        "every layer cut to the same size: loads with stock transformers code, but it is not exactly the "
        "trajectory's subnetwork",
        "elastic: about the dense model's size; any step loads from it, reading only what that step keeps",
    ],
)
uniform = kind == UNIFORM
HF, GGUF = "transformers folder", "GGUF for llama.cpp and Ollama"
fmt = HF
if kind != EVERY_STEP:
    fmt = st.radio(
        "Format",
        [HF, GGUF],
        horizontal=True,
        key="export_format",
        captions=[
            "safetensors, config and tokenizer: loads with from_pretrained",
            "one .gguf file, with an Ollama Modelfile and a model card; per-layer widths as llama.cpp's deci "
            "architecture (Llama, Mistral, Qwen2), uniform ones as the family's stock architecture",
        ],
    )
name = {THIS_STEP: f"step{step}", UNIFORM: f"step{step}-uniform", EVERY_STEP: "all-steps"}[kind]
name += "-gguf" if fmt == GGUF else ""
out = serving.exports_dir() / f"{checks.trajectory_id(traj)}-{name}"  # the cache's, never a path from the browser


def _export_form() -> None:
    with st.form("export"):
        st.caption(
            f"Written into the cache (`exports/{out.name}`, replaced if it holds an earlier export), then "
            "offered as a download: " + ("the .gguf file." if fmt == GGUF else "a zip of the folder.")
        )
        device = st.selectbox("Device", ui.DEVICES)
        outtype = None
        if fmt == GGUF:
            from gisp_engine.export.gguf import DEFAULT_OUTTYPE, OUTTYPES

            outtype = st.selectbox(
                "Weights in the file",
                OUTTYPES,
                index=OUTTYPES.index(DEFAULT_OUTTYPE),
                key="export_outtype",
                help="f32, f16, bf16 and q8_0 are written directly; the others (q4_k_m, ...) by llama.cpp's own "
                "quantizer. Measured on SmolLM2 at 32% sparsity (README): f16 keeps the top-1 token at every "
                "position, q4_k_m at 83% of them.",
            )
        go = st.form_submit_button("Export", type="primary")
    if not go:
        return
    if step == 0 and kind != EVERY_STEP:
        st.warning("Step 0 is the dense model: the export is a copy of it.")
    bar = st.progress(0.0, text="loading the model")

    def report(event: ProgressEvent) -> None:
        stage = (event.info or {}).get("stage", event.message)
        bar.progress(min(event.done / max(event.total, 1), 1.0), text=stage)

    with ui.guard("The export failed: "):
        serving.require_changes("an export")
        # the exporter slices the model it is given; it keeps the base checkpoint's dtype
        loaded = ui.dense_copy(model, device, recorded_checkpoint_dtype(model))
        if fmt == GGUF:
            from gisp_engine.export.gguf import export_gguf

            result = export_gguf(loaded, traj, step, out, uniform=uniform, outtype=outtype, progress=report)
        elif kind == EVERY_STEP:
            from gisp_engine.export.elastic import export_elastic

            result = export_elastic(loaded, traj, out, progress=report)
        else:
            result = export_subnetwork(loaded, traj, step, out, uniform=uniform, progress=report)
        summary = result.summary()
        bar.progress(1.0, text="packing the download" if summary["kind"] != "gguf" else "done")
        summary["download"] = str(
            Path(summary["gguf"]) if summary["kind"] == "gguf" else serving.export_archive(summary["path"])
        )
    st.session_state["export_last"] = summary


def download_button(path: str, key: str) -> None:
    """The file (a .gguf, or a folder's zip) as a download: read only when the button is pressed."""
    with ui.guard("Nothing to download: ", stop=False):
        file = serving.downloadable(path)
        st.download_button(
            f"Download {file.name} ({file.stat().st_size / 2**20:.0f} MiB)",
            data=lambda: file.read_bytes(),
            file_name=file.name,
            key=key,
            type="primary",
            mime="application/zip" if file.suffix == ".zip" else "application/octet-stream",
            on_click="ignore",
            icon=":material/download:",
        )


def existing_downloads() -> None:
    """What a viewer may take: the exports of this trajectory the cache already holds."""
    root = serving.exports_dir()
    prefix = f"{checks.trajectory_id(traj)}-"
    found = sorted(root.glob(f"{prefix}*.zip")) + sorted(root.glob(f"{prefix}*/*.gguf")) if root.is_dir() else []
    if not found:
        st.write("No export of this trajectory is in the cache yet.")
    for i, file in enumerate(found):
        download_button(str(file), key=f"export_existing_{i}")


if ui.can_change():
    _export_form()
else:
    ui.viewer_note("A new export")
    st.subheader("Exports of this trajectory in the cache")
    existing_downloads()
    st.stop()

summary = st.session_state.get("export_last")
if summary:
    download_button(summary["download"], key="export_download")
    folder = Path(summary["path"]).name  # what the download unpacks to
if summary and summary["kind"] == "gguf":
    gguf = Path(summary["gguf"]).name
    st.success(f"Exported `{gguf}` (in the cache's `exports/{folder}`)")
    c = st.columns(4)
    c[0].metric("Layout", f"{summary['layout']} ({summary['arch']})")
    c[1].metric("Step", summary["step"])
    c[2].metric("Parameter sparsity", f"{summary['param_sparsity']:.1%}")
    c[3].metric(f"File ({summary['outtype']})", f"{summary['file_bytes'] / 2**20:.0f} MiB")
    if summary["padding_overhead"]:
        st.caption(
            f"llama.cpp needs equal query-head groups per KV head: {summary['padding_overhead']:.1%} more "
            "decoder weights were written for them (zero dummy heads or repeated KV heads; same outputs)."
        )
    st.code(
        f"""llama-cli -m {gguf} -p "The capital of France is" -n 64

printf 'FROM ./{gguf}\\n' > Modelfile    # as the export's own Modelfile, beside the file
ollama create gisp-step{summary["step"]} -f Modelfile
ollama run gisp-step{summary["step"]}""",
        language="bash",
    )
    st.code(
        f'''from gisp_engine.model.llamacpp import GGUFModel    # llama-cpp-python, which make setup installs
with GGUFModel("{gguf}") as model:
    ids = model.tokenize("The capital of France is")
    print(model.detokenize(model.greedy(ids, 16)))''',
        language="python",
    )
elif summary and summary["kind"] == "elastic":
    st.success(f"Exported every step to the cache's `exports/{folder}`")
    c = st.columns(4)
    c[0].metric("Kind", "elastic")
    c[1].metric("Steps", f"0 .. {summary['last_step']}")
    c[2].metric("Up to parameter sparsity", f"{summary['max_param_sparsity']:.1%}")
    c[3].metric("Weights on disk", f"{summary['weights_bytes'] / 2**20:.0f} MiB")
    st.write(f"Unzip the download into `{folder}/`; it loads with {summary['loads_with']}.")
    st.code(
        f'''from gisp_engine import load_pruned           # verifies the files against the manifest
pruned = load_pruned("{folder}", step={step})    # or sparsity=0.3; neither: the last step
model, tokenizer = pruned.model, pruned.tokenizer

# or, without this project installed (reads only the rows step {step} keeps):
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{folder}", trust_remote_code=True, gisp_step={step})
tokenizer = AutoTokenizer.from_pretrained("{folder}")''',
        language="python",
    )
elif summary:
    st.success(f"Exported to the cache's `exports/{folder}`")
    c = st.columns(4)
    c[0].metric("Kind", summary["kind"])
    c[1].metric("Step", summary["step"])
    c[2].metric("Parameter sparsity", f"{summary['param_sparsity']:.1%}")
    c[3].metric("Parameters (all)", f"{summary['param_count'] / 1e6:.2f} M")
    st.write(f"Unzip the download into `{folder}/`; it loads with {summary['loads_with']}.")
    remote = "" if summary.get("uniform") else ", trust_remote_code=True"
    st.code(
        f'''from gisp_engine import load_pruned           # verifies the files against the manifest
pruned = load_pruned("{folder}")
model, tokenizer = pruned.model, pruned.tokenizer

# or, without this project installed:
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{folder}"{remote})
tokenizer = AutoTokenizer.from_pretrained("{folder}")''',
        language="python",
    )
