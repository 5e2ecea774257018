"""How GISP works: the score, the global ranking, the iterations and the nesting, shown on the examples."""

from pathlib import Path

import streamlit as st

import explorer_ui as ui
from gisp_engine import explore, figures
from gisp_engine.sweep import sweep_table

ui.page_setup("How GISP works")
st.title("How GISP works")
st.caption("Global Iterative Structured Pruning, in four ideas, illustrated with the example trajectories "
           "of the embedded SmolLM2-135M that ship with the explorer.")

examples = {Path(r["path"]).name: r["path"] for r in ui.trajectory_rows() if r["source"] == "example"}
iterative = examples.get("smollm2-135m-ppl-iterative")
oneshot = examples.get("smollm2-135m-ppl-oneshot")

st.header("1. A score for every head and channel")
st.markdown(
    r"""
A structure is an **attention head** (its rows of $W_Q, W_K, W_V$ and columns of $W_O$) or an
**MLP channel** (a row of the gate and up projections and a column of the down projection).
Its importance is first-order: how much the calibration loss would change if its weights were set
to zero, estimated from one backward pass,

$$ I_s = \sum_{w \in s} \left| w \cdot \frac{\partial \mathcal{L}}{\partial w} \right| . $$

The loss $\mathcal{L}$ is what you want to keep: perplexity on general text, a margin between right
and wrong answers for decision tasks, or a task loss such as GSM8K's.
"""
)

st.header("2. One global ranking")
st.markdown(
    """
Heads and channels of **all layers** compete in one list. Scores are first divided by a per-kind
normaliser (a head holds many more weights than a channel), then the lowest are removed wherever
they are. So layers that matter little lose much, and layers that matter keep their width: the
heatmaps below show exactly that unevenness, which a per-layer (local) rule such as Wanda-sp cannot produce.
"""
)

st.header("3. Iterative: a little at a time")
st.markdown(
    """
Removing structures changes what the remaining ones do, so their scores go stale. GISP removes a
small slice, **recomputes the gradients on the pruned model**, ranks again, and repeats. A one-shot
method ranks once and cuts everything at that ranking. At the same parameter sparsity the iterative
subnetwork is usually the better one: compare the two examples' curves.
"""
)


@st.cache_data(show_spinner=False)
def _tables(paths: tuple[str, ...], stamps: tuple[int, ...], evals: tuple[int, ...]):
    return {Path(p).name: sweep_table(ui.load_trajectory(p), ui.evaluations(p)) for p in paths}


if iterative and oneshot:
    tables = _tables((iterative, oneshot), (ui.stamp(iterative), ui.stamp(oneshot)),
                     (len(ui.evaluations(iterative)), len(ui.evaluations(oneshot))))
    if all("wikitext2" in t.quality for t in tables.values()):
        names = {"smollm2-135m-ppl-iterative": "iterative (10 steps)", "smollm2-135m-ppl-oneshot": "one-shot"}
        st.plotly_chart(figures.compare_quality_figure({names[k]: v for k, v in tables.items()}, "wikitext2"),
                        key="learn_iterative_vs_oneshot")
        st.caption("WikiText-2 perplexity of the two example trajectories (same model, calibration and final "
                   "structural ratio). The one-shot trajectory has only the dense point and its single step.")
    else:
        st.info("Sweep the two example trajectories on the Choose page to see their curves here.")
else:
    st.info("The example trajectories (`cache/examples/`) are missing from this checkout.")

st.header("4. Nested subnetworks: prune once, deploy many")
st.markdown(
    """
Nothing removed ever comes back. So the subnetwork at step *t* contains the one at step *t + 1*,
and one run yields every sparsity from dense to the last step: choosing a deployment size is
choosing a prefix of one trajectory, with no new pruning. Each cell below shows when a head was
removed; move the slider and the removed set only grows.
"""
)
if iterative:
    view = ui.view_for(iterative)
    step = st.slider("Step", 0, view.num_steps, min(5, view.num_steps), key="learn_step")
    at = view.at(step)
    st.plotly_chart(figures.head_survival_figure(view, at), key="learn_heads")
    st.caption(f"Step {step}: {at.param_sparsity:.1%} of the parameters removed. Layers at the start and the end "
               "are protected, as in the method.")

st.page_link("pages/6_Choose.py", label="Now choose a sparsity for yourself", icon=":material/target:")
