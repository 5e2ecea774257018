"""Evaluate: quick checks at the chosen sparsity against the dense model, and side-by-side generation.

Results are remembered in the cache (``gisp_engine.evaluation.checks``) and appear on the Explore curve.
"""

import streamlit as st

import explorer_ui as ui
from gisp_engine.core.progress import ProgressEvent
from gisp_engine.data.text import BOS_POLICIES, BOS_POLICY_HELP
from gisp_engine.evaluation import checks

ui.page_setup("Evaluate")
st.title("Evaluate a point of the trajectory")

path, view, traj = ui.picked_trajectory()
model = ui.model_id(traj)
step = ui.step_slider(path, view, "evaluate_step")
st.caption(
    f"Step {step}: parameter sparsity {view.param_sparsity[step]:.1%}, structural ratio "
    f"{view.structural_ratio[step]:.1%}; model `{model}`."
)


def _evaluate_form() -> None:
    """New evaluations (they load models and write to the cache's evaluation store)."""
    available = checks.available_checks()
    with st.form("evaluate_settings"):
        c1, c2, c3, c4, c5 = st.columns(5)
        task = c1.selectbox(
            "Check",
            list(available),
            format_func=lambda t: available[t].title,
            help="Accuracy tasks appear here when the engine provides them.",
        )
        limit = c2.number_input("Limit (examples or windows; 0 = all)", min_value=0, value=32, step=8)
        seq_len = c3.number_input(
            "Window length (tokens)",
            min_value=2,
            value=128,
            step=64,
            help="128: GISP and LLM-Pruner convention; 2048: Wanda and SliceGPT. Not comparable.",
        )
        bos = c4.selectbox(
            "BOS token (perplexity)",
            BOS_POLICIES,
            help=BOS_POLICY_HELP,
        )
        device = c5.selectbox("Device", ui.DEVICES)
        refresh = st.checkbox("Recompute even if remembered", value=False)
        go = st.form_submit_button("Evaluate dense and pruned", type="primary")

    if go:
        check = available[task]
        options = {"seq_len": int(seq_len), "batch_size": 8, "bos": bos}
        results = {}
        bar = st.progress(0.0, text="loading the models")
        points = [("dense", 0), ("pruned", step)] if step else [("dense", 0)]
        for i, (name, at_step) in enumerate(points):

            def report(event: ProgressEvent, i=i, name=name) -> None:
                done = (i + event.done / max(event.total, 1)) / len(points)
                bar.progress(min(done, 1.0), text=f"{name}: {event.done} of {event.total}")

            with ui.guard(f"The {name} evaluation failed: "):
                loaded = ui.model_at_step(path, ui.stamp(path), at_step, device, "auto")
                results[name] = checks.evaluate_step(
                    loaded, traj, at_step, task, int(limit) or None, options, progress=report, refresh=refresh
                )
        bar.progress(1.0, text="done")
        cols = st.columns(len(results))
        dense_value = results["dense"]["value"]
        for col, (name, res) in zip(cols, results.items()):
            delta = None if name == "dense" else f"{res['value'] - dense_value:+.3f}"
            col.metric(
                f"{name} ({res['param_sparsity']:.1%} params)",
                f"{res['value']:.3f}",
                delta=delta,
                delta_color="inverse" if check.metric == "perplexity" else "normal",
                help=checks.row_label(res) + (" · remembered" if res.get("cached") else " · computed now"),
            )


if ui.can_change():
    _evaluate_form()
else:
    ui.viewer_note("A new evaluation")

remembered = ui.evaluations(path)
if remembered:
    st.subheader("Remembered evaluations of this trajectory")
    ordered = sorted(remembered, key=lambda r: (checks.row_label(r), r["step"]))
    st.dataframe(
        [
            {
                "check": checks.row_label(r),
                "step": r["step"],
                "parameter sparsity": r["param_sparsity"],
                "value": r["value"],
                "device": r.get("device"),
                "when": r.get("created"),
            }
            for r in ordered
        ],
        hide_index=True,
        column_config={"parameter sparsity": st.column_config.NumberColumn(format="percent")},
    )
    st.page_link("pages/2_Explore.py", label="See them on the trajectory curve", icon=":material/grid_view:")

st.subheader("Generation, dense and pruned side by side")


def _generate_form() -> None:
    with st.form("generate"):
        prompt = st.text_area("Prompt", "The capital of France is", height=80)
        g1, g2 = st.columns(2)
        max_new = g1.number_input("New tokens", min_value=1, max_value=512, value=40, step=10)
        gen_device = g2.selectbox("Device", ui.DEVICES, key="generate_device")
        gen = st.form_submit_button("Generate (greedy)")
    if gen:
        left, right = st.columns(2)
        sides = (("dense", 0), (f"pruned, {view.param_sparsity[step]:.1%} params", step))
        for col, (name, at_step) in zip((left, right), sides):
            with col, ui.guard(f"Generation failed ({name}): "), st.spinner(f"{name}…"):
                loaded = ui.model_at_step(path, ui.stamp(path), at_step, gen_device, "auto")
                text = checks.greedy_generate(loaded, prompt, int(max_new))
                st.markdown(f"**{name}**")
                st.text_area(
                    name,
                    prompt + text,
                    height=200,
                    disabled=True,
                    label_visibility="collapsed",
                    key=f"generated_{at_step}",
                )


if ui.can_change():
    _generate_form()
else:
    ui.viewer_note("Generation (it loads and runs two models)")
