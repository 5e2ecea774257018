"""Plotly figures of trajectories: survival heatmaps, per-layer widths, the trajectory curve, comparisons.

Colours are readable with colour-vision deficiencies: removal steps use cividis, categories the
Okabe-Ito palette, and every axis says what it counts. The figures take the arrays prepared in
:mod:`gisp_engine.explore` and do no pruning arithmetic of their own.
"""

from __future__ import annotations

import numpy as np

from .explore import DIFF_LABELS, Difference, JaccardCurve, StepView, TrajectoryView

KEPT_COLOUR = "#ececec"
BLUE, ORANGE, GREEN, VERMILLION, SKY, PURPLE = "#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7"
DIFF_COLOURS = (KEPT_COLOUR, BLUE, ORANGE, "#3b3b3b")
STEP_SCALE_TOP = 0.85  # stop cividis before its palest yellow so late removals stay distinct from "kept"


def _go():
    import plotly.graph_objects as go

    return go


def survival_colorscale(num_steps: int) -> list:
    """0 = kept (light grey), 1..T = the step of removal (cividis, dark = early)."""
    from plotly.colors import sample_colorscale

    t = max(num_steps, 1)
    edge = 0.5 / t
    colours = sample_colorscale("Cividis", list(np.linspace(0.0, STEP_SCALE_TOP, 8)))
    scale = [[0.0, KEPT_COLOUR], [edge, KEPT_COLOUR]]
    scale += [[edge + (1.0 - edge) * i / (len(colours) - 1), c] for i, c in enumerate(colours)]
    return scale


def _step_colorbar(num_steps: int) -> dict:
    every = max(1, int(np.ceil(num_steps / 10)))
    ticks = [0] + list(range(every, num_steps + 1, every))
    if num_steps not in ticks:
        ticks.append(num_steps)
    return dict(title=dict(text="removed<br>at step"), tickvals=ticks,
                ticktext=["kept"] + [str(t) for t in ticks[1:]], thickness=14)


def _layout(fig, title: str, height: int, **kw) -> None:
    fig.update_layout(title=dict(text=title, x=0.0, xanchor="left"), height=height,
                      margin=dict(l=60, r=20, t=50, b=50), **kw)


def _head_hover(view: TrajectoryView) -> np.ndarray:
    protected = set(view.protected_layers)
    text = np.empty(view.head_removal.shape, dtype=object)
    for layer in range(view.num_layers):
        for h in range(view.head_units):
            r = int(view.head_removal[layer, h])
            when = "protected layer, never removed" if layer in protected else (
                "kept to the last step" if r < 0 else f"removed at step {r} ({view.param_sparsity[r]:.1%} params)")
            score = view.head_score[layer, h]
            score_text = "not scored" if np.isnan(score) else f"{score:.3g}"
            text[layer, h] = f"layer {layer} · head · {view.head_unit} {h}<br>{when}<br>score {score_text}"
    return text


def head_survival_figure(view: TrajectoryView, at: StepView, hover: np.ndarray | None = None):
    """Layers x head units: kept, or the step at which the unit was removed."""
    go = _go()
    hover = _head_hover(view) if hover is None else hover
    fig = go.Figure(go.Heatmap(
        z=at.head_z, x=np.arange(view.head_units), y=np.arange(view.num_layers), zmin=0, zmax=view.num_steps,
        colorscale=survival_colorscale(view.num_steps), colorbar=_step_colorbar(view.num_steps),
        text=hover, hovertemplate="%{text}<extra></extra>", xgap=1, ygap=1,
    ))
    _layout(fig, f"Attention heads at {at.param_sparsity:.1%} parameter sparsity: {at.kept_heads} of "
                 f"{view.head_removal.size} {view.head_unit}s kept", 520)
    fig.update_xaxes(title_text=f"{view.head_unit} index", dtick=1)
    fig.update_yaxes(title_text="layer", autorange="reversed")
    return fig


def channel_survival_figure(view: TrajectoryView, at: StepView):
    """Layers x MLP channels, each layer's channels sorted by removal step (earliest on the left)."""
    go = _go()
    fig = go.Figure(go.Heatmap(
        z=at.channel_z, y=np.arange(view.num_layers), zmin=0, zmax=view.num_steps,
        colorscale=survival_colorscale(view.num_steps), colorbar=_step_colorbar(view.num_steps),
        customdata=view.channel_custom_sorted,
        hovertemplate=("layer %{y} · channel %{customdata[0]}<br>removal step %{customdata[1]} "
                       "(-1: never)<br>score %{customdata[2]:.3g}<extra></extra>"),
    ))
    _layout(fig, f"MLP channels at {at.param_sparsity:.1%} parameter sparsity: {at.kept_channels} of "
                 f"{view.channel_removal.size} kept", 520)
    fig.update_xaxes(title_text="channels of the layer, sorted by removal step (count)")
    fig.update_yaxes(title_text="layer", autorange="reversed")
    return fig


def channel_bins_figure(view: TrajectoryView, at: StepView, bins: int = 64):
    """Layers x groups of consecutive channels (original order): fraction kept."""
    go = _go()
    fraction, starts = view.channel_bins(at.step, bins)
    width = np.diff(np.append(starts, view.channels))
    ends = np.broadcast_to(starts + width - 1, fraction.shape)
    fig = go.Figure(go.Heatmap(
        z=fraction, x=starts, y=np.arange(view.num_layers), zmin=0, zmax=1, colorscale="Cividis",
        customdata=np.stack([np.broadcast_to(starts, fraction.shape), ends], -1),
        colorbar=dict(title=dict(text="kept<br>fraction"), tickformat=".0%", thickness=14),
        hovertemplate="layer %{y} · channels %{customdata[0]}-%{customdata[1]}<br>kept %{z:.0%}<extra></extra>",
    ))
    _layout(fig, f"MLP channels at {at.param_sparsity:.1%} parameter sparsity, in groups of "
                 f"{int(width[0])} (original order)", 520)
    fig.update_xaxes(title_text="first channel index of the group")
    fig.update_yaxes(title_text="layer", autorange="reversed")
    return fig


def layer_fraction_figure(view: TrajectoryView, at: StepView):
    """Kept fraction of attention head units and MLP channels per layer."""
    go = _go()
    layers = np.arange(view.num_layers)
    fig = go.Figure()
    fig.add_bar(x=layers, y=at.head_kept_fraction, name=f"attention ({view.head_unit}s)", marker_color=BLUE,
                hovertemplate="layer %{x}: %{y:.0%} of heads kept<extra></extra>")
    fig.add_bar(x=layers, y=at.channel_kept_fraction, name="MLP channels", marker_color=ORANGE,
                hovertemplate="layer %{x}: %{y:.0%} of channels kept<extra></extra>")
    for layer in view.protected_layers:
        fig.add_vrect(x0=layer - 0.5, x1=layer + 0.5, fillcolor="#999999", opacity=0.15, line_width=0)
    _layout(fig, "Kept fraction per layer (shaded: protected layers)", 340, barmode="group",
            legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"))
    fig.update_xaxes(title_text="layer", dtick=max(1, view.num_layers // 15))
    fig.update_yaxes(title_text="kept fraction", tickformat=".0%", range=[0, 1.05])
    return fig


def trajectory_curve_figure(view: TrajectoryView, step: int, evaluations: list[dict] | None = None):
    """Calibration loss across parameter sparsity, evaluated metrics beside it, the chosen point marked."""
    go = _go()
    fig = go.Figure()
    x = view.param_sparsity
    fig.add_scatter(x=x, y=view.loss, mode="lines+markers", name="calibration loss", line_color=BLUE,
                    customdata=np.arange(len(x)),
                    hovertemplate="step %{customdata}: %{x:.1%} params<br>loss %{y:.4f} nats<extra></extra>")
    fig.add_scatter(x=[x[step]], y=[view.loss[step]], mode="markers", name="chosen point",
                    marker=dict(size=14, color=VERMILLION, symbol="diamond", line=dict(width=1, color="black")),
                    hovertemplate="chosen: step " + str(step) + ", %{x:.1%} params<extra></extra>")
    fig.add_vline(x=float(x[step]), line_dash="dot", line_color=VERMILLION)
    axes = {}
    palette = iter([ORANGE, GREEN, PURPLE, SKY, "#000000"] * 4)
    for label, rows in _group_evaluations(evaluations or []).items():
        metric = rows[0]["metric"]
        axis = axes.setdefault(metric, f"y{len(axes) + 2}")
        colour = next(palette)
        fig.add_scatter(x=[r["param_sparsity"] for r in rows], y=[r["value"] for r in rows], yaxis=axis,
                        mode="lines+markers", name=label, line=dict(color=colour, dash="dash"),
                        marker=dict(symbol="square", size=8),
                        customdata=[r["step"] for r in rows],
                        hovertemplate=f"{label}<br>step %{{customdata}}: %{{x:.1%}} params<br>"
                                      f"{metric} %{{y:.4g}}<extra></extra>")
    layout = dict(xaxis=dict(title_text="parameter sparsity (decoder linear weights removed)", tickformat=".0%"),
                  yaxis=dict(title_text="calibration loss (mean NLL, nats)"),
                  legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"))
    for i, (metric, axis) in enumerate(axes.items()):
        name = "yaxis" + axis[1:]
        layout[name] = dict(title_text=_metric_title(metric), overlaying="y", side="right",
                            anchor="free" if i else "x", autoshift=True if i else None,
                            type="log" if metric == "perplexity" else "linear", showgrid=False)
    fig.update_layout(**layout)
    _layout(fig, "Trajectory: calibration loss and evaluations", 380)
    return fig


def _metric_title(metric: str) -> str:
    return {"perplexity": "perplexity (log scale)", "accuracy": "accuracy"}.get(metric, metric)


def _group_evaluations(evaluations: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in evaluations:
        groups.setdefault(row["label"], []).append(row)
    return {k: sorted(v, key=lambda r: r["param_sparsity"]) for k, v in groups.items()}


# ---- comparison ----------------------------------------------------------------------------
def jaccard_figure(curve: JaccardCurve, chosen: float | None = None):
    go = _go()
    fig = go.Figure()
    custom = np.stack([curve.step_a, curve.sparsity_a, curve.step_b, curve.sparsity_b], -1)
    hover = ("%{x:.1%} params: Jaccard %{y:.3f}<br>A step %{customdata[0]} (%{customdata[1]:.1%}), "
             "B step %{customdata[2]} (%{customdata[3]:.1%})<extra>%{fullData.name}</extra>")
    for name, values, colour, dash in (("all structures", curve.all, "#000000", "solid"),
                                        ("attention heads", curve.heads, BLUE, "dash"),
                                        ("MLP channels", curve.channels, ORANGE, "dot")):
        fig.add_scatter(x=curve.sparsity, y=values, name=name, mode="lines+markers", customdata=custom,
                        line=dict(color=colour, dash=dash), hovertemplate=hover)
    if chosen is not None:
        fig.add_vline(x=chosen, line_dash="dot", line_color=VERMILLION)
    _layout(fig, "Overlap of the kept sets (Jaccard index) across parameter sparsity", 360,
            legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"))
    fig.update_xaxes(title_text="parameter sparsity (each trajectory at its step nearest)", tickformat=".0%")
    fig.update_yaxes(title_text="Jaccard index |A∩B| / |A∪B|", range=[0, 1.02])
    return fig


def _diff_colorscale() -> list:
    scale = []
    for i, colour in enumerate(DIFF_COLOURS):
        scale += [[i / 4, colour], [(i + 1) / 4, colour]]
    return scale


def _diff_colorbar() -> dict:
    return dict(tickvals=[0.375, 1.125, 1.875, 2.625], ticktext=list(DIFF_LABELS), thickness=14)


def difference_head_figure(diff: Difference, head_unit: str):
    go = _go()
    layers, units = diff.head_code.shape
    labels = np.array(DIFF_LABELS, dtype=object)[diff.head_code]
    fig = go.Figure(go.Heatmap(
        z=diff.head_code, x=np.arange(units), y=np.arange(layers), zmin=-0.0, zmax=3.0,
        colorscale=_diff_colorscale(), colorbar=_diff_colorbar(), text=labels, xgap=1, ygap=1,
        hovertemplate=f"layer %{{y}} · head · {head_unit} %{{x}}<br>%{{text}}<extra></extra>",
    ))
    _layout(fig, f"Attention heads: A at step {diff.step_a} vs B at step {diff.step_b}", 480)
    fig.update_xaxes(title_text=f"{head_unit} index", dtick=1)
    fig.update_yaxes(title_text="layer", autorange="reversed")
    return fig


def difference_channel_figure(diff: Difference):
    go = _go()
    layers = diff.channel_code.shape[0]
    fig = go.Figure(go.Heatmap(
        z=diff.channel_code, y=np.arange(layers), zmin=0.0, zmax=3.0, colorscale=_diff_colorscale(),
        colorbar=_diff_colorbar(), customdata=diff.channel_index,
        hovertemplate="layer %{y} · channel %{customdata}<br>code %{z} (0 both kept, 1 only A, 2 only B, "
                      "3 both removed)<extra></extra>",
    ))
    _layout(fig, f"MLP channels: A at step {diff.step_a} vs B at step {diff.step_b} (sorted by category)", 480)
    fig.update_xaxes(title_text="channels of the layer, sorted by category (count)")
    fig.update_yaxes(title_text="layer", autorange="reversed")
    return fig
