"""How GISP works: the score, the global ranking, the iterations and the nesting, shown on the examples."""

from pathlib import Path

import numpy as np
import streamlit as st

import explorer_ui as ui
from gisp_engine.choose.table import sweep_table
from gisp_engine.explore import explain, figures

ui.page_setup("How GISP works")
st.title("How GISP works")
st.caption(
    "Global Iterative Structured Pruning, in four ideas and four pictures, drawn from the example trajectories "
    "of the embedded SmolLM2-135M that ship with the explorer."
)

examples = {Path(r["path"]).name: r["path"] for r in ui.trajectory_rows() if r["source"] == "example"}
iterative = examples.get("smollm2-135m-ppl-iterative")
oneshot = examples.get("smollm2-135m-ppl-oneshot")
wanda = examples.get("smollm2-135m-wanda-sp")
MISSING = "The example trajectories (`cache/examples/`) are missing from this checkout."


def _titled(fig, prefix: str):
    """The figure with whose it is in front of its title ("GISP · MLP channels: …")."""
    return fig.update_layout(title_text=f"{prefix} · {fig.layout.title.text}")


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
if iterative:
    view = ui.view_for(iterative)
    st.plotly_chart(figures.head_score_figure(view), key="learn_scores")
    st.caption(
        "The score of every attention head of the iterative example, the last time it was ranked (at the step "
        "that removed it, or at the last step for the heads that stay); a colour step is a factor of ten. "
        "The first and last layers are protected: never scored, never removed."
    )
else:
    st.info(MISSING)

st.header("2. One global ranking")
st.markdown(
    """
Heads and channels of **all layers** compete in one list. Scores are first divided by a per-kind
normaliser (a head holds many more weights than a channel), then the lowest are removed wherever
they are. So layers that matter little lose much, and layers that matter keep their width. A per-layer
(local) rule such as Wanda-sp ranks within each layer and cuts every layer by the same fraction: below, the two
examples at about the same parameter sparsity.
"""
)
if iterative and wanda:
    gisp_view, wanda_view = ui.view_for(iterative), ui.view_for(wanda)
    target = 0.4
    gisp_at = gisp_view.at(int(np.abs(gisp_view.param_sparsity - target).argmin()))
    wanda_at = wanda_view.at(int(np.abs(wanda_view.param_sparsity - target).argmin()))
    left, right = st.columns(2)
    for column, name, view, at in ((left, "GISP", gisp_view, gisp_at), (right, "Wanda-sp", wanda_view, wanda_at)):
        column.plotly_chart(_titled(figures.layer_fraction_figure(view, at), name), key=f"learn_layers_{name}")
        column.plotly_chart(_titled(figures.channel_survival_figure(view, at), name), key=f"learn_channels_{name}")
    pruned = [i for i in range(gisp_view.num_layers) if i not in gisp_view.protected_layers]
    g_heads, w_heads = gisp_at.head_kept_fraction[pruned], wanda_at.head_kept_fraction[pruned]
    g_channels, w_channels = gisp_at.channel_kept_fraction[pruned], wanda_at.channel_kept_fraction[pruned]
    st.caption(
        f"At {gisp_at.param_sparsity:.1%} (GISP, step {gisp_at.step}) and {wanda_at.param_sparsity:.1%} of the "
        f"parameters removed (Wanda-sp, step {wanda_at.step}). In the layers either may prune, GISP keeps "
        f"{g_heads.min():.0%} to {g_heads.max():.0%} of the heads and {g_channels.min():.0%} to {g_channels.max():.0%} "
        f"of the MLP channels, layer by layer; Wanda-sp keeps {w_heads.min():.0%}"
        f"{'' if np.ptp(w_heads) < 1e-9 else f' to {w_heads.max():.0%}'} of the heads and {w_channels.min():.0%}"
        f"{'' if np.ptp(w_channels) < 1e-9 else f' to {w_channels.max():.0%}'} of the channels in every one. "
        "In the channel maps each row is a layer, its channels sorted by when they were removed: the edge of the grey "
        "(kept) part is ragged for the global ranking and straight for the per-layer one."
    )
else:
    st.info(MISSING)

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
    tables = _tables(
        (iterative, oneshot),
        (ui.stamp(iterative), ui.stamp(oneshot)),
        (len(ui.evaluations(iterative)), len(ui.evaluations(oneshot))),
    )
    if all("wikitext2" in t.quality for t in tables.values()):
        names = {"smollm2-135m-ppl-iterative": "iterative (10 steps)", "smollm2-135m-ppl-oneshot": "one-shot"}
        st.plotly_chart(
            figures.compare_quality_figure({names[k]: v for k, v in tables.items()}, "wikitext2"),
            key="learn_iterative_vs_oneshot",
        )
        st.caption(
            "WikiText-2 perplexity of the two example trajectories (same model, calibration and final "
            "structural ratio). The one-shot trajectory has only two subnetworks, the dense model and its "
            "single step, so its two points are not joined: nothing between them was measured."
        )
    else:
        st.info("Sweep the two example trajectories on the Choose page to see their curves here.")
else:
    st.info(MISSING)

st.markdown(
    """
**How stale does a one-shot ranking get?** Every step of an iterative trajectory keeps the scores it ranked, so the
ranking each step used can be set beside the dense model's: Spearman's correlation over the structures still there
(does the step still order them as the dense model did?), and the Jaccard index of what the trajectory removed so
far with what the dense ranking alone would have removed at the same count (the one-shot choice).
"""
)


@st.cache_data(show_spinner=False)
def _stability(path: str, stamp: int):
    result = explain.rank_stability(ui.load_trajectory(path))
    return result, figures.rank_stability_figure(result, ui.view_for(path).param_sparsity)


with_scores = {
    name: p
    for name, p in examples.items()
    if ui.load_trajectory(p).scores is not None and not explain.fixed_ranking_reason(ui.load_trajectory(p))
}
if with_scores:
    names = sorted(with_scores, key=lambda n: (n != "smollm2-135m-ppl-iterative", n))
    name = st.radio("Example", names, horizontal=True, key="learn_stability_example") if len(names) > 1 else names[0]
    result, figure = _stability(with_scores[name], ui.stamp(with_scores[name]))
    st.plotly_chart(_titled(figure, name), key="learn_stability")
    mid, last = len(result.steps) // 2, len(result.steps) - 1
    st.caption(
        f"{name}: by step {result.steps[mid]} the scores' rank correlation with the dense ones is "
        f"{result.spearman[mid]:.2f}, and of the {result.removed[mid]:,} structures removed by then "
        f"{result.jaccard[mid]:.0%} (Jaccard) are the ones the dense ranking would have removed; at the last step "
        f"{result.spearman[last]:.2f} and {result.jaccard[last]:.0%}. What a one-shot method removes is decided by a "
        "ranking that the pruning itself makes stale; GISP ranks again on the model as it is. A fixed ranking "
        "(one-shot, Wanda-sp) is 1.0 at every step by construction, so it is not drawn."
    )
else:
    st.info(
        "No example here keeps every step's scores: regenerate one with scores (the default now) to see how "
        "far each step's ranking drifts from the dense one."
    )

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
    st.caption(
        f"Step {step}: {at.param_sparsity:.1%} of the parameters removed. Layers at the start and the end "
        "are protected, as in the method."
    )
else:
    st.info(MISSING)

st.page_link("pages/6_Choose.py", label="Now choose a sparsity for yourself", icon=":material/target:")
