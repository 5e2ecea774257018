"""Plotly figures of trajectories: survival heatmaps, per-layer widths, the trajectory curve, comparisons.

Colours are readable with colour-vision deficiencies: removal steps use cividis, categories the
Okabe-Ito palette, and every axis says what it counts. The figures take the arrays prepared in
:mod:`gisp_engine.explore.view` and do no pruning arithmetic of their own.
"""

from __future__ import annotations

import numpy as np

from .view import DIFF_LABELS, Difference, JaccardCurve, StepView, TrajectoryView

KEPT_COLOUR = "#ececec"
BLUE, ORANGE, GREEN, VERMILLION, SKY, PURPLE = "#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7"
DIFF_COLOURS = (KEPT_COLOUR, BLUE, ORANGE, "#3b3b3b")
STEP_SCALE_TOP = 0.85  # stop cividis before its palest yellow so late removals stay distinct from "kept"


TITLE_ROW_PX = 38  # the title's band at the top of a figure; the legend starts below it


def _figure(data: list[dict], layout: dict, title: str, height: int):
    """One validated plotly figure from plain specs (built in one go: much faster than add_*/update_*).

    The title sits at the top of the figure, the legend (when there is one) in rows below it, and the plot
    below the legend, which pushes it down as far as its rows need: the legend never covers the title.
    """
    import plotly.graph_objects as go

    base = dict(
        title=dict(text=title, x=0.0, xanchor="left", yref="container", y=1.0, yanchor="top", pad=dict(t=10)),
        height=height,
        margin=dict(l=60, r=20, t=50, b=50),
        legend=dict(
            orientation="h", x=0.0, xanchor="left", yref="container", y=1.0 - TITLE_ROW_PX / height, yanchor="top"
        ),
    )
    return go.Figure(dict(data=data, layout={**base, **layout}))


def _axis(title: str, **kw) -> dict:
    return dict(title=dict(text=title), **kw)


def _tick_label(value: float) -> str:
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"


def _log_axis(title: str, values, **kw) -> dict:
    """A log axis labelled in full at 1-2-5 x 10^k ("50", "100", "200"), its range from one such tick below the data
    to one above: plotly's own log ticks label the minor ones "2" and "5" alone. ``values``: the plotted series."""
    v = np.concatenate([np.asarray(part, dtype=float).ravel() for part in values]) if len(values) else np.zeros(0)
    v = v[np.isfinite(v) & (v > 0)]
    axis = _axis(title, type="log", **kw)
    if not len(v):
        return axis
    lo, hi = float(v.min()) / 1.02, float(v.max()) * 1.02  # a marker at the edge stays whole
    decades = np.log10(hi) - np.log10(lo)
    mantissas = (1, 2, 5) if decades <= 2.5 else (1, 3) if decades <= 4 else (1,)
    ticks = [
        m * 10.0**e for e in range(int(np.floor(np.log10(lo))) - 1, int(np.ceil(np.log10(hi))) + 1) for m in mantissas
    ]
    below, above = max(t for t in ticks if t <= lo), min(t for t in ticks if t >= hi)
    shown = [t for t in ticks if below <= t <= above]
    axis.update(
        range=[float(np.log10(below)), float(np.log10(above))], tickvals=shown, ticktext=[_tick_label(t) for t in shown]
    )
    return axis


MAX_JOIN = 0.15  # parameter sparsity between two measured points that a line may join


def _gaps(steps, sparsity) -> np.ndarray:
    """Where a line must break: between points that are not neighbouring steps, or lie far apart in sparsity.

    A line between two points says the subnetworks between them were measured along it; a one-shot
    trajectory (the dense model and one step) or a sweep of every fifth step has no such points.
    """
    steps, sparsity = np.asarray(steps), np.asarray(sparsity, dtype=float)
    if len(steps) < 2:
        return np.zeros(0, dtype=int)
    return np.flatnonzero((np.diff(steps) != 1) | (np.abs(np.diff(sparsity)) > MAX_JOIN)) + 1


def _broken(at: np.ndarray, *arrays):
    """Each array with NaN inserted at ``at`` (plotly leaves a gap there; a point alone shows as a marker)."""
    return [np.insert(np.asarray(a, dtype=float), at, np.nan) if len(at) else np.asarray(a) for a in arrays]


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
    return dict(
        title=dict(text="removed<br>at step"),
        tickvals=ticks,
        ticktext=["kept"] + [str(t) for t in ticks[1:]],
        thickness=14,
    )


def head_hover(view: TrajectoryView) -> np.ndarray:
    """Hover text of every head unit: its name, when it was removed, its score (fixed per trajectory)."""
    protected = set(view.protected_layers)
    text = np.empty(view.head_removal.shape, dtype=object)
    for layer in range(view.num_layers):
        for h in range(view.head_units):
            r = int(view.head_removal[layer, h])
            when = (
                "protected layer, never removed"
                if layer in protected
                else (
                    "kept to the last step" if r < 0 else f"removed at step {r} ({view.param_sparsity[r]:.1%} params)"
                )
            )
            score = view.head_score[layer, h]
            score_text = "not scored" if np.isnan(score) else f"{score:.3g}"
            text[layer, h] = f"layer {layer} · head · {view.head_unit} {h}<br>{when}<br>score {score_text}"
    return text


def head_survival_figure(view: TrajectoryView, at: StepView, hover: np.ndarray | None = None):
    """Layers x head units: kept, or the step at which the unit was removed."""
    heatmap = dict(
        type="heatmap",
        z=at.head_z,
        x=np.arange(view.head_units),
        y=np.arange(view.num_layers),
        zmin=0,
        zmax=view.num_steps,
        colorscale=survival_colorscale(view.num_steps),
        colorbar=_step_colorbar(view.num_steps),
        text=head_hover(view) if hover is None else hover,
        hovertemplate="%{text}<extra></extra>",
        xgap=1,
        ygap=1,
    )
    layout = dict(xaxis=_axis(f"{view.head_unit} index", dtick=1), yaxis=_axis("layer", autorange="reversed"))
    return _figure([heatmap], layout, f"Attention heads: {at.kept_heads} of {view.head_removal.size} kept", 520)


def head_score_figure(view: TrajectoryView):
    """Layers x head units: each unit's score the last time it was ranked (log colour; protected layers blank)."""
    score = np.where(view.head_score > 0, view.head_score, np.nan)
    heatmap = dict(
        type="heatmap",
        z=np.log10(score),
        x=np.arange(view.head_units),
        y=np.arange(view.num_layers),
        colorscale="Cividis",
        xgap=1,
        ygap=1,
        customdata=score,
        hoverongaps=False,
        colorbar=dict(title=dict(text="score<br>(log10)"), thickness=14),
        hovertemplate=f"layer %{{y}} · {view.head_unit} %{{x}}<br>score %{{customdata:.3g}}<extra></extra>",
    )
    layout = dict(xaxis=_axis(f"{view.head_unit} index", dtick=1), yaxis=_axis("layer", autorange="reversed"))
    return _figure([heatmap], layout, "Importance of every attention head (its score when last ranked)", 460)


def channel_survival_figure(view: TrajectoryView, at: StepView):
    """Layers x MLP channels, each layer's channels sorted by removal step (earliest on the left)."""
    heatmap = dict(
        type="heatmap",
        z=at.channel_z,
        y=np.arange(view.num_layers),
        zmin=0,
        zmax=view.num_steps,
        colorscale=survival_colorscale(view.num_steps),
        colorbar=_step_colorbar(view.num_steps),
        customdata=view.channel_custom_sorted,
        hovertemplate=(
            f"layer %{{y}} · channel %{{customdata[0]}}<br>kept through step %{{customdata[1]}} of "
            f"{view.num_steps}<br>score %{{customdata[2]:.3g}}<extra></extra>"
        ),
    )
    layout = dict(
        xaxis=_axis("channels of the layer, sorted by removal step (count)"), yaxis=_axis("layer", autorange="reversed")
    )
    return _figure([heatmap], layout, f"MLP channels: {at.kept_channels} of {view.channel_removal.size} kept", 520)


def channel_bins_figure(view: TrajectoryView, at: StepView, bins: int = 64):
    """Layers x groups of consecutive channels (original order): fraction kept."""
    fraction, starts = view.channel_bins(at.step, bins)
    width = np.diff(np.append(starts, view.channels))
    ends = np.broadcast_to(starts + width - 1, fraction.shape)
    heatmap = dict(
        type="heatmap",
        z=fraction,
        x=starts,
        y=np.arange(view.num_layers),
        zmin=0,
        zmax=1,
        colorscale="Cividis",
        customdata=np.stack([np.broadcast_to(starts, fraction.shape), ends], -1),
        colorbar=dict(title=dict(text="kept<br>fraction"), tickformat=".0%", thickness=14),
        hovertemplate="layer %{y} · channels %{customdata[0]}-%{customdata[1]}<br>kept %{z:.0%}<extra></extra>",
    )
    layout = dict(xaxis=_axis("first channel index of the group"), yaxis=_axis("layer", autorange="reversed"))
    title = f"MLP channels: {at.kept_channels} of {view.channel_removal.size} kept, in groups of {int(width[0])}"
    return _figure([heatmap], layout, title, 520)


def _band(x0: float, x1: float, colour: str = "#999999") -> dict:
    return dict(
        type="rect",
        xref="x",
        yref="paper",
        x0=x0,
        x1=x1,
        y0=0,
        y1=1,
        fillcolor=colour,
        opacity=0.15,
        line=dict(width=0),
        layer="below",
    )


def _vline(x: float, colour: str) -> dict:
    return dict(type="line", xref="x", yref="paper", x0=x, x1=x, y0=0, y1=1, line=dict(color=colour, dash="dot"))


def layer_fraction_figure(view: TrajectoryView, at: StepView):
    """Kept fraction of attention head units and MLP channels per layer."""
    layers = np.arange(view.num_layers)
    data = [
        dict(
            type="bar",
            x=layers,
            y=at.head_kept_fraction,
            name=f"attention ({view.head_unit}s)",
            marker_color=BLUE,
            hovertemplate="layer %{x}: %{y:.0%} of heads kept<extra></extra>",
        ),
        dict(
            type="bar",
            x=layers,
            y=at.channel_kept_fraction,
            name="MLP channels",
            marker_color=ORANGE,
            hovertemplate="layer %{x}: %{y:.0%} of channels kept<extra></extra>",
        ),
    ]
    layout = dict(
        barmode="group",
        shapes=[_band(i - 0.5, i + 0.5) for i in view.protected_layers],
        xaxis=_axis("layer", dtick=max(1, view.num_layers // 15)),
        yaxis=_axis("kept fraction", tickformat=".0%", range=[0, 1.05]),
    )
    return _figure(data, layout, "Kept fraction per layer (shaded: protected layers)", 340)


def trajectory_curve_figure(view: TrajectoryView, step: int, evaluations: list[dict] | None = None):
    """Calibration loss across parameter sparsity, and below it one panel per evaluated metric (perplexity,
    accuracy, ...), all on the same x axis; the chosen point marked across them."""
    x = view.param_sparsity
    groups = _group_evaluations(evaluations or [])
    order = {"perplexity": 0, "accuracy": 1}
    metrics = sorted(dict.fromkeys(rows[0]["metric"] for rows in groups.values()), key=lambda m: order.get(m, 2))
    panels = 1 + len(metrics)
    gap = 0.08 if panels > 1 else 0.0
    size = (1.0 - gap * (panels - 1)) / panels
    layout: dict = dict(shapes=[_vline(float(x[step]), VERMILLION)])
    for i in range(panels):  # panel 0 on top; the x axis is labelled under the last one only
        top = 1.0 - i * (size + gap)
        suffix = "" if i == 0 else str(i + 1)
        last = i == panels - 1
        layout["xaxis" + suffix] = _axis(
            "parameter sparsity (decoder linear weights removed)" if last else "",
            tickformat=".0%",
            anchor="y" + suffix,
            showticklabels=last,
            **({} if i == 0 else {"matches": "x"}),
        )
        layout["yaxis" + suffix] = dict(domain=[max(0.0, top - size), top], anchor="x" + suffix)
    layout["yaxis"].update(_axis("calibration loss (nats)"))
    segments = _gaps(np.arange(len(x)), x)
    lx, ly, ls = _broken(segments, x, view.loss, np.arange(len(x)))
    data = [
        dict(
            type="scatter",
            x=lx,
            y=ly,
            mode="lines+markers",
            name="calibration loss",
            line=dict(color=BLUE),
            customdata=ls,
            hovertemplate="step %{customdata}: %{x:.1%} params<br>loss %{y:.4f} nats<extra></extra>",
        ),
        dict(
            type="scatter",
            x=[x[step]],
            y=[view.loss[step]],
            mode="markers",
            name="chosen point",
            marker=dict(size=14, color=VERMILLION, symbol="diamond", line=dict(width=1, color="black")),
            hovertemplate=f"chosen: step {step}, %{{x:.1%}} params<extra></extra>",
        ),
    ]
    palette = iter([ORANGE, GREEN, PURPLE, SKY, "#000000"] * 4)
    for label, rows in groups.items():
        metric = rows[0]["metric"]
        suffix = str(metrics.index(metric) + 2)
        steps = [r["step"] for r in rows]
        px, py, ps = _broken(
            _gaps(steps, [r["param_sparsity"] for r in rows]),
            [r["param_sparsity"] for r in rows],
            [r["value"] for r in rows],
            steps,
        )
        data.append(
            dict(
                type="scatter",
                x=px,
                y=py,
                xaxis="x" + suffix,
                yaxis="y" + suffix,
                mode="lines+markers",
                name=label,
                line=dict(color=next(palette)),
                marker=dict(symbol="square", size=8),
                customdata=ps,
                hovertemplate=f"{label}<br>step %{{customdata}}: %{{x:.1%}} params<br>"
                f"{metric} %{{y:.4g}}<extra></extra>",
            )
        )
    for i, metric in enumerate(metrics):
        values = [r["value"] for rows in groups.values() if rows[0]["metric"] == metric for r in rows]
        axis = layout["yaxis" + str(i + 2)]
        if metric == "perplexity":
            axis.update(_log_axis(_metric_title(metric), values))
        else:
            axis.update(_axis(_metric_title(metric), **({"tickformat": ".0%"} if metric == "accuracy" else {})))
    return _figure(data, layout, "Trajectory: calibration loss and evaluations", 300 + 190 * (panels - 1))


def _metric_title(metric: str) -> str:
    return {"perplexity": "perplexity (log scale)", "accuracy": "accuracy"}.get(metric, metric)


def _group_evaluations(evaluations: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in evaluations:
        groups.setdefault(row["label"], []).append(row)
    return {k: sorted(v, key=lambda r: r["param_sparsity"]) for k, v in groups.items()}


# ---- comparison ----------------------------------------------------------------------------
def jaccard_figure(curve: JaccardCurve, chosen: float | None = None):
    custom = np.stack([curve.step_a, curve.sparsity_a, curve.step_b, curve.sparsity_b], -1)
    hover = (
        "%{x:.1%} params: Jaccard %{y:.3f}<br>A step %{customdata[0]} (%{customdata[1]:.1%}), "
        "B step %{customdata[2]} (%{customdata[3]:.1%})<extra>%{fullData.name}</extra>"
    )
    data = [
        dict(
            type="scatter",
            x=curve.sparsity,
            y=values,
            name=name,
            mode="lines+markers",
            customdata=custom,
            line=dict(color=colour, dash=dash),
            hovertemplate=hover,
        )
        for name, values, colour, dash in (
            ("all structures", curve.all, "#000000", "solid"),
            ("attention heads", curve.heads, BLUE, "dash"),
            ("MLP channels", curve.channels, ORANGE, "dot"),
        )
    ]
    layout = dict(
        shapes=[_vline(chosen, VERMILLION)] if chosen is not None else [],
        xaxis=_axis("parameter sparsity (each trajectory at its step nearest)", tickformat=".0%"),
        yaxis=_axis("Jaccard index |A∩B| / |A∪B|", range=[0, 1.02]),
    )
    return _figure(data, layout, "Overlap of the kept sets (Jaccard index) across parameter sparsity", 360)


def _diff_colorscale() -> list:
    scale = []
    for i, colour in enumerate(DIFF_COLOURS):
        scale += [[i / 4, colour], [(i + 1) / 4, colour]]
    return scale


def _diff_colorbar() -> dict:
    return dict(tickvals=[0.375, 1.125, 1.875, 2.625], ticktext=list(DIFF_LABELS), thickness=14)


def difference_head_figure(diff: Difference, head_unit: str):
    layers, units = diff.head_code.shape
    heatmap = dict(
        type="heatmap",
        z=diff.head_code,
        x=np.arange(units),
        y=np.arange(layers),
        zmin=0.0,
        zmax=3.0,
        colorscale=_diff_colorscale(),
        colorbar=_diff_colorbar(),
        xgap=1,
        ygap=1,
        text=np.array(DIFF_LABELS, dtype=object)[diff.head_code],
        hovertemplate=f"layer %{{y}} · head · {head_unit} %{{x}}<br>%{{text}}<extra></extra>",
    )
    layout = dict(xaxis=_axis(f"{head_unit} index", dtick=1), yaxis=_axis("layer", autorange="reversed"))
    return _figure([heatmap], layout, f"Attention heads: A at step {diff.step_a} vs B at step {diff.step_b}", 480)


def difference_channel_figure(diff: Difference):
    layers = diff.channel_code.shape[0]
    heatmap = dict(
        type="heatmap",
        z=diff.channel_code,
        y=np.arange(layers),
        zmin=0.0,
        zmax=3.0,
        colorscale=_diff_colorscale(),
        colorbar=_diff_colorbar(),
        customdata=diff.channel_index,
        hovertemplate="layer %{y} · channel %{customdata}<br>code %{z} (0 both kept, 1 only A, 2 only B, "
        "3 both removed)<extra></extra>",
    )
    layout = dict(
        xaxis=_axis("channels of the layer, sorted by category (count)"), yaxis=_axis("layer", autorange="reversed")
    )
    return _figure([heatmap], layout, f"MLP channels: A at step {diff.step_a} vs B at step {diff.step_b}", 480)


# ---- sweeps: quality and cost of every step ------------------------------------------------
PALETTE = (BLUE, ORANGE, GREEN, VERMILLION, SKY, PURPLE, "#000000", "#999999")


def _hline(y: float, colour: str, text: str) -> dict:
    return dict(
        type="line",
        xref="paper",
        yref="y",
        x0=0,
        x1=1,
        y0=y,
        y1=y,
        line=dict(color=colour, dash="dash", width=1),
        label=dict(text=text),
    )


def _measured(table, values: np.ndarray) -> np.ndarray:
    return np.flatnonzero(~np.isnan(values))


def _highlight(x: float, y: float, name: str) -> dict:
    return dict(
        type="scatter",
        x=[x],
        y=[y],
        mode="markers",
        name=name,
        marker=dict(size=16, color=VERMILLION, symbol="star", line=dict(width=1, color="black")),
        hovertemplate=f"{name}<extra></extra>",
    )


def sweep_quality_figure(table, metric: str, highlight: int | None = None, columns: list[str] | None = None):
    """Perplexity (``metric='perplexity'``) or accuracies against parameter sparsity, dense as reference lines."""
    columns = columns or [c for c, m in table.metric.items() if m == metric]
    data, shapes, plotted = [], [], []
    for colour, column in zip(PALETTE * 4, columns):
        values = table.quality[column]
        idx = _measured(table, values)
        if not len(idx):
            continue
        plotted.append(values[idx])
        px, py, ps = _broken(_gaps(idx, table.param_sparsity[idx]), table.param_sparsity[idx], values[idx], idx)
        data.append(
            dict(
                type="scatter",
                x=px,
                y=py,
                mode="lines+markers",
                name=column,
                line=dict(color=colour),
                customdata=ps,
                hovertemplate=f"{column}<br>step %{{customdata}}: %{{x:.1%}} params<br>%{{y:.4g}}<extra></extra>",
            )
        )
        if not np.isnan(values[0]):
            shapes.append(_hline(float(values[0]), colour, f"dense {column}" if len(columns) > 1 else "dense"))
        if highlight is not None and not np.isnan(values[highlight]):
            data.append(
                _highlight(
                    float(table.param_sparsity[highlight]), float(values[highlight]), f"recommended: step {highlight}"
                )
            )
    if highlight is not None:
        shapes.append(_vline(float(table.param_sparsity[highlight]), VERMILLION))
    ytitle = "WikiText-2 perplexity (log scale)" if metric == "perplexity" else "accuracy"
    layout = dict(
        shapes=shapes,
        xaxis=_axis("parameter sparsity (decoder linear weights removed)", tickformat=".0%"),
        yaxis=(_log_axis(ytitle, plotted) if metric == "perplexity" else _axis(ytitle, tickformat=".0%")),
    )
    title = "Perplexity against parameter sparsity" if metric == "perplexity" else "Accuracy against parameter sparsity"
    return _figure(data, layout, title, 380)


COST_AXES = {
    "prefill_speedup": ("prefill speed-up (x dense)", 1.0),
    "decode_speedup": ("decode speed-up (x dense)", 1.0),
    "peak_bytes": ("peak memory (MiB)", 1 / 2**20),
}


def sweep_cost_figure(table, x: str = "prefill_speedup", y: str = "wikitext2", highlight: int | None = None):
    """Quality against a measured cost: each step one point, labelled by its parameter sparsity."""
    title_x, scale = COST_AXES[x]
    xs = table.cost.get(x, np.full(len(table.steps), np.nan)) * scale
    ys = table.quality.get(y, np.full(len(table.steps), np.nan))
    idx = np.flatnonzero(~np.isnan(xs) & ~np.isnan(ys))
    gaps = _gaps(idx, table.param_sparsity[idx])
    px, py, ps, pp = _broken(gaps, xs[idx], ys[idx], idx, table.param_sparsity[idx])
    custom = np.stack([ps, pp], -1) if len(idx) else np.zeros((0, 2))
    trace = dict(
        type="scatter",
        x=px,
        y=py,
        mode="lines+markers+text",
        name="steps",
        text=["" if np.isnan(p) else f"{p:.0%}" for p in pp],
        textposition="top center",
        line=dict(color=BLUE),
        customdata=custom,
        hovertemplate="step %{customdata[0]}: %{customdata[1]:.1%} params<br>%{x:.3g}, %{y:.4g}<extra></extra>",
    )
    low, high = table.cost.get(f"{x}_low"), table.cost.get(f"{x}_high")
    if low is not None and high is not None:  # a speed-up's spread: the lowest and highest paired repeat ratio
        (lo, hi) = _broken(gaps, low[idx] * scale, high[idx] * scale)
        centre = np.asarray(px, dtype=float)
        trace["error_x"] = dict(
            type="data",
            symmetric=False,
            array=np.nan_to_num(hi - centre),
            arrayminus=np.nan_to_num(centre - lo),
            color=BLUE,
            thickness=1,
            width=3,
        )
        trace["hovertemplate"] = (
            "step %{customdata[0]}: %{customdata[1]:.1%} params<br>%{x:.3g} (repeats "
            "%{customdata[2]:.3g} to %{customdata[3]:.3g}), %{y:.4g}<extra></extra>"
        )
        trace["customdata"] = np.stack([ps, pp, lo, hi], -1) if len(idx) else np.zeros((0, 4))
    data = [trace]
    if highlight is not None and highlight in idx:
        data.append(_highlight(float(xs[highlight]), float(ys[highlight]), f"recommended: step {highlight}"))
    metric = table.metric.get(y, "perplexity")
    ytitle = "WikiText-2 perplexity (log scale)" if y == "wikitext2" else f"{y} accuracy"
    layout = dict(xaxis=_axis(title_x), yaxis=_log_axis(ytitle, ys[idx]) if metric == "perplexity" else _axis(ytitle))
    return _figure(data, layout, f"{'Perplexity' if y == 'wikitext2' else y} against {title_x.split(' (')[0]}", 360)


def compare_quality_figure(tables: dict, column: str, chosen: float | None = None):
    """One quality column of several trajectories (name -> SweepTable) against parameter sparsity."""
    data, plotted = [], []
    metric = "perplexity"
    for colour, (name, table) in zip(PALETTE * 4, tables.items()):
        values = table.quality.get(column, table.cost.get(column))
        if values is None:
            continue
        metric = table.metric.get(column, metric)
        idx = np.flatnonzero(~np.isnan(values))
        plotted.append(values[idx])
        px, py, ps = _broken(_gaps(idx, table.param_sparsity[idx]), table.param_sparsity[idx], values[idx], idx)
        data.append(
            dict(
                type="scatter",
                x=px,
                y=py,
                mode="lines+markers",
                name=name,
                line=dict(color=colour),
                customdata=ps,
                hovertemplate=f"{name}<br>step %{{customdata}}: %{{x:.1%}} params<br>%{{y:.4g}}<extra></extra>",
            )
        )
    ytitle = (
        "WikiText-2 perplexity (log scale)"
        if column == "wikitext2"
        else COST_AXES.get(column, (f"{column} accuracy",))[0]
    )
    layout = dict(
        shapes=[_vline(chosen, VERMILLION)] if chosen is not None else [],
        xaxis=_axis("parameter sparsity (decoder linear weights removed)", tickformat=".0%"),
        yaxis=_log_axis(ytitle, plotted) if metric == "perplexity" else _axis(ytitle),
    )
    return _figure(data, layout, f"{column} of both trajectories against parameter sparsity", 380)


# ---- why a structure was removed (gisp_engine.explore.explain) ---------------------------------------
def structure_history_figure(history, head_unit: str = "query head"):
    """One structure across the steps: its score against the cut line (log scale), and below its rank among the
    structures still scored, with the ranks each step removed shaded; the step it was removed at marked."""
    steps = history.steps
    kind = head_unit if history.kind == "head" else "channel"
    name = f"layer {history.layer} · {kind} {history.index}"
    data = [
        dict(
            type="scatter",
            x=steps,
            y=history.cut,
            mode="lines+markers",
            name="cut line (highest score removed)",
            line=dict(color=VERMILLION, dash="dash"),
            marker=dict(symbol="line-ew-open", size=10),
            hovertemplate="step %{x}: cut line %{y:.4g}<extra></extra>",
        ),
        dict(
            type="scatter",
            x=steps,
            y=history.score,
            mode="lines+markers",
            name=name,
            line=dict(color=BLUE),
            hovertemplate="step %{x}: score %{y:.4g}<extra></extra>",
        ),
        dict(
            type="bar",
            x=steps,
            y=history.removed,
            yaxis="y2",
            name="ranks removed at the step",
            marker_color=ORANGE,
            opacity=0.35,
            hovertemplate="step %{x} removed ranks 1 to %{y}<extra></extra>",
        ),
        dict(
            type="scatter",
            x=steps,
            y=history.rank,
            yaxis="y2",
            mode="lines+markers",
            name="its rank",
            line=dict(color=BLUE),
            customdata=history.scored,
            showlegend=False,
            hovertemplate="step %{x}: rank %{y} of %{customdata} (1 = lowest)<extra></extra>",
        ),
    ]
    shapes = []
    if history.removal_step > 0:
        shapes.append(_vline(float(history.removal_step), VERMILLION))
        i = history.removal_step - 1
        data.append(
            dict(
                type="scatter",
                x=[history.removal_step],
                y=[history.score[i]],
                mode="markers",
                name=f"removed at step {history.removal_step}",
                marker=dict(size=14, color=VERMILLION, symbol="x", line=dict(width=1, color="black")),
                hovertemplate=f"removed at step {history.removal_step}<extra></extra>",
            )
        )
    values = [v[np.isfinite(v)] for v in (history.score, history.cut)]
    status = (
        "protected layer: never scored"
        if history.protected
        else "never removed"
        if history.removal_step < 0
        else f"removed at step {history.removal_step}"
    )
    layout = dict(
        shapes=shapes,
        xaxis=_axis(
            "pruning step (each ranks the model after the step before)", dtick=max(1, len(steps) // 12), anchor="y2"
        ),
        yaxis=dict(_log_axis("normalised score (log scale)", values), domain=[0.45, 1.0]),
        yaxis2=_axis("rank (1 = lowest)", domain=[0.0, 0.36], rangemode="tozero"),
        bargap=0.5,
    )
    return _figure(data, layout, f"History of {name}: {status}", 480)


def _histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(values, edges)
    return counts / max(1, len(values))


def score_distribution_figure(scores, head_unit: str = "query head"):
    """The scores one step ranked: heads and channels overall (share per log bin) and per layer (boxes from
    precomputed quartiles: the browser gets a few numbers per layer, not every score), with the cut line."""
    positive = scores.score[scores.score > 0]
    lo, hi = (np.log10(positive.min()), np.log10(positive.max())) if len(positive) else (-8.0, 0.0)
    edges = np.linspace(lo, hi + 1e-9, 41)
    centres = (edges[:-1] + edges[1:]) / 2
    data, shapes = [], []
    for kind, label, colour in ((0, f"attention ({head_unit}s)", BLUE), (1, "MLP channels", ORANGE)):
        mine = scores.score[(scores.kind == kind) & (scores.score > 0)]
        if not len(mine):
            continue
        data.append(
            dict(
                type="scatter",
                x=10**centres,
                y=_histogram(np.log10(mine), edges),
                mode="lines",
                line=dict(color=colour, shape="hvh"),
                name=label,
                legendgroup=label,
                hovertemplate=f"{label}<br>score about %{{x:.3g}}: %{{y:.1%}} of them<extra></extra>",
            )
        )
        stats = scores.per_layer(kind)
        data.append(
            dict(
                type="box",
                x=stats["layer"],
                q1=stats["q1"],
                median=stats["median"],
                q3=stats["q3"],
                lowerfence=stats["min"],
                upperfence=stats["max"],
                xaxis="x2",
                yaxis="y2",
                name=label,
                legendgroup=label,
                showlegend=False,
                marker_color=colour,
                offsetgroup=str(kind),
                customdata=np.stack([stats["count"], stats["removed"]], -1),
                hovertemplate=f"{label}, layer %{{x}}<extra></extra>",
            )
        )
    if np.isfinite(scores.cut):
        shapes.append(
            dict(
                type="line",
                xref="x",
                yref="y domain",
                x0=scores.cut,
                x1=scores.cut,
                y0=0,
                y1=1,
                line=dict(color=VERMILLION, dash="dash", width=1),
            )
        )
        shapes.append(
            dict(
                type="line",
                xref="x2 domain",
                yref="y2",
                x0=0,
                x1=1,
                y0=scores.cut,
                y1=scores.cut,
                line=dict(color=VERMILLION, dash="dash", width=1),
            )
        )
    layout = dict(
        shapes=shapes,
        boxmode="group",
        xaxis=_axis("normalised score (log scale)", type="log", anchor="y", exponentformat="e"),
        yaxis=_axis("share of the kind", tickformat=".0%", domain=[0.62, 1.0]),
        xaxis2=_axis("layer", anchor="y2", dtick=1),
        yaxis2=dict(_axis("score (log scale)", type="log", exponentformat="e"), domain=[0.0, 0.45]),
    )
    removed = int(scores.removed_here.sum())
    title = f"Scores step {scores.step} ranked: the lowest {removed:,} of {len(scores.score):,} removed"
    return _figure(data, layout, title, 560)


def rank_stability_figure(stability, param_sparsity: np.ndarray | None = None):
    """How far each step's ranking has moved from the dense model's (Spearman), and how much of what the trajectory
    removed the dense ranking alone would have removed at the same count (Jaccard)."""
    custom = np.stack(
        [
            stability.removed,
            param_sparsity[stability.steps] if param_sparsity is not None else np.full(len(stability.steps), np.nan),
        ],
        -1,
    )
    data = [
        dict(
            type="scatter",
            x=stability.steps,
            y=stability.spearman,
            mode="lines+markers",
            customdata=custom,
            name="Spearman: step's scores vs dense scores (structures still there)",
            line=dict(color=BLUE),
            hovertemplate="step %{x}: Spearman %{y:.3f}<extra></extra>",
        ),
        dict(
            type="scatter",
            x=stability.steps,
            y=stability.jaccard,
            mode="lines+markers",
            customdata=custom,
            name="Jaccard: removed so far vs the dense ranking's lowest at the same count",
            line=dict(color=ORANGE, dash="dash"),
            hovertemplate="step %{x}: Jaccard %{y:.3f} (%{customdata[0]:,} removed, %{customdata[1]:.1%} params)"
            "<extra></extra>",
        ),
    ]
    layout = dict(
        xaxis=_axis("pruning step", dtick=max(1, len(stability.steps) // 12)),
        yaxis=_axis("agreement with the dense ranking", range=[0, 1.02]),
    )
    return _figure(data, layout, "How stale a one-shot ranking gets", 400)


def attention_figure(
    patterns,
    layer: int,
    unit: int,
    gqa: str,
    group_size: int,
    head_unit: str = "query head",
    step_patterns=None,
    step: int | None = None,
):
    """One head's attention pattern (query token x key token) in the dense model, and beside it at ``step`` when
    the step's model still has the head."""
    labels = [f"{i}·{t.replace(chr(10), '⏎')}" for i, t in enumerate(patterns.tokens)]
    panels = [("dense model", patterns)]
    if step_patterns is not None and step_patterns.has(layer, unit, gqa, group_size):
        panels.append((f"step {step}", step_patterns))
    data, layout = [], {}
    gap = 0.08
    width = (1.0 - gap * (len(panels) - 1)) / len(panels)
    for i, (name, pats) in enumerate(panels):
        suffix = "" if i == 0 else str(i + 1)
        data.append(
            dict(
                type="heatmap",
                z=pats.head(layer, unit, gqa, group_size),
                x=labels,
                y=labels,
                xaxis="x" + suffix,
                yaxis="y" + suffix,
                zmin=0,
                zmax=1,
                colorscale="Cividis",
                showscale=i == 0,
                colorbar=dict(title=dict(text="weight"), thickness=14),
                hovertemplate=f"{name}<br>query %{{y}}<br>key %{{x}}<br>weight %{{z:.3f}}<extra></extra>",
            )
        )
        left = i * (width + gap)
        layout["xaxis" + suffix] = dict(
            _axis(f"key token ({name})"),
            domain=[left, left + width],
            tickangle=-60,
            anchor="y" + suffix,
            tickfont=dict(size=9),
        )
        layout["yaxis" + suffix] = dict(
            _axis("query token" if i == 0 else ""),
            autorange="reversed",
            anchor="x" + suffix,
            tickfont=dict(size=9),
            showticklabels=i == 0,
        )
    what = f"{head_unit} {unit}" + (" (mean of its query heads)" if gqa != "query" else "")
    gone = "" if len(panels) > 1 or step_patterns is None else f"; removed by step {step}"
    return _figure(data, layout, f"What layer {layer} · {what} attends to{gone}", 560)
