"""The explorer's figures, read as plotly specs: full labels on log axes, no line across subnetworks that were never
measured, one panel per metric on the trajectory curve, hovers in words. (tests/test_browser.py renders them.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from apptest import decode
from needs import require

from gisp_engine.choose.table import sweep_table
from gisp_engine.evaluation.checks import load_evaluations
from gisp_engine.explore import figures
from gisp_engine.explore.view import TrajectoryView, load_trajectory

EXAMPLES = Path(__file__).resolve().parents[1] / "cache" / "examples"


def _example(name: str):
    folder = EXAMPLES / name
    if not (folder / "evaluations.json").is_file():
        require(f"the example {name} with its sweep results")
    return load_trajectory(folder)


@pytest.fixture(scope="module")
def iterative():
    return _example("smollm2-135m-ppl-iterative")


@pytest.fixture(scope="module")
def oneshot():
    return _example("smollm2-135m-ppl-oneshot")


def _floats(values) -> np.ndarray:
    return np.asarray(decode(values), dtype=float)


def _finite(values) -> np.ndarray:
    values = _floats(values)
    return values[np.isfinite(values)]


def _full_labels(axis: dict, plotted) -> None:
    """Every tick of a log axis is labelled with its whole value, and the ticks span what is plotted."""
    assert axis["type"] == "log"
    values, labels = np.asarray(axis["tickvals"]), axis["ticktext"]
    assert [float(t.replace(",", "")) for t in labels] == pytest.approx(values)
    mantissa = values / 10.0 ** np.floor(np.log10(values) + 1e-9)
    assert set(np.round(mantissa, 6)) <= {1.0, 2.0, 3.0, 5.0}
    low, high = 10.0 ** np.asarray(axis["range"])
    assert low <= np.min(plotted) and np.max(plotted) <= high
    assert low == pytest.approx(values[0]) and high == pytest.approx(values[-1])


def test_log_axes_label_every_tick_in_full(iterative, oneshot):
    table = sweep_table(iterative)
    ppl = _finite(table.quality["wikitext2"])
    fig = figures.sweep_quality_figure(table, "perplexity").to_dict()
    _full_labels(fig["layout"]["yaxis"], ppl)
    assert {"100", "200", "500"} <= set(fig["layout"]["yaxis"]["ticktext"])  # not bare "2" and "5"

    both = {"iterative": table, "one-shot": sweep_table(oneshot)}
    fig = figures.compare_quality_figure(both, "wikitext2").to_dict()
    plotted = np.concatenate([_finite(t["y"]) for t in fig["data"]])
    assert plotted.max() > 1e5  # the one-shot example's last step
    _full_labels(fig["layout"]["yaxis"], plotted)
    assert "100,000" in fig["layout"]["yaxis"]["ticktext"]

    view = TrajectoryView.from_trajectory(iterative)
    curve = figures.trajectory_curve_figure(view, 3, load_evaluations(iterative)).to_dict()
    perplexity = next(a for k, a in curve["layout"].items() if k.startswith("yaxis") and a.get("type") == "log")
    _full_labels(perplexity, [r["value"] for r in load_evaluations(iterative) if r["metric"] == "perplexity"])


def test_a_line_joins_only_neighbouring_steps_close_in_sparsity(iterative, oneshot):
    both = {"iterative": sweep_table(iterative), "one-shot": sweep_table(oneshot)}
    traces = {t["name"]: t for t in figures.compare_quality_figure(both, "wikitext2").to_dict()["data"]}
    one = _floats(traces["one-shot"]["y"])
    assert len(_finite(one)) == 2 and np.isnan(one).sum() == 1  # the dense model and the one step: no line
    assert not np.isnan(_floats(traces["iterative"]["y"])).any()  # ten steps a few points apart

    every_fifth = [r for r in load_evaluations(iterative) if r["task"] == "wikitext2" and r["step"] in (0, 5, 10)]
    fig = figures.sweep_quality_figure(sweep_table(iterative, every_fifth), "perplexity").to_dict()
    (series,) = [t for t in fig["data"] if t["name"] == "wikitext2"] or [fig["data"][0]]
    y = _floats(series["y"])
    assert len(_finite(y)) == 3 and np.isnan(y).sum() == 2  # three points, no line between them


def test_the_trajectory_curve_has_one_panel_per_metric(iterative):
    view = TrajectoryView.from_trajectory(iterative)
    evaluations = load_evaluations(iterative)
    assert {r["metric"] for r in evaluations} == {"perplexity", "accuracy"}
    layout = figures.trajectory_curve_figure(view, 3, evaluations).to_dict()["layout"]
    yaxes = {k: a for k, a in layout.items() if k.startswith("yaxis")}
    assert len(yaxes) == 3 and not any("overlaying" in a for a in yaxes.values())  # no axis drawn over another
    domains = sorted(tuple(a["domain"]) for a in yaxes.values())
    assert all(lower[1] < upper[0] for lower, upper in zip(domains, domains[1:]))  # stacked, apart
    xaxes = {k: a for k, a in layout.items() if k.startswith("xaxis")}
    assert len(xaxes) == 3 and all(a.get("matches") == "x" for k, a in xaxes.items() if k != "xaxis")
    assert [yaxes[k]["title"]["text"] for k in ("yaxis", "yaxis2", "yaxis3")] == [
        "calibration loss (nats)",
        "perplexity (log scale)",
        "accuracy",
    ]


def test_the_channel_hover_says_when_in_words(iterative):
    view = TrajectoryView.from_trajectory(iterative)
    trace = figures.channel_survival_figure(view, view.at(4)).to_dict()["data"][0]
    assert (
        "-1" not in trace["hovertemplate"]
        and f"kept through step %{{customdata[1]}} of {view.num_steps}" in trace["hovertemplate"]
    )
    last_kept = _floats(trace["customdata"])[..., 1]
    removal = view.channel_removal_sorted
    np.testing.assert_array_equal(last_kept, np.where(removal < 0, view.num_steps, removal - 1))


def test_legends_sit_below_the_title(iterative):
    view = TrajectoryView.from_trajectory(iterative)
    for fig in (
        figures.layer_fraction_figure(view, view.at(3)),
        figures.sweep_quality_figure(sweep_table(iterative), "perplexity"),
    ):
        layout = fig.to_dict()["layout"]
        title, legend = layout["title"], layout["legend"]
        assert title["yref"] == legend["yref"] == "container" and legend["y"] < title["y"]
        assert legend["yanchor"] == "top" and legend["orientation"] == "h"


def test_the_speed_up_chart_shows_each_steps_spread():
    """Error bars from the lowest to the highest paired repeat ratio (cost.cost_ratios), around the median."""
    from gisp_engine.choose.table import SweepTable

    n = 4
    median = np.array([1.0, 1.2, np.nan, 1.6])
    table = SweepTable(
        steps=np.arange(n),
        param_sparsity=np.array([0.0, 0.1, 0.2, 0.3]),
        structural_ratio=np.zeros(n),
        kept_params=np.zeros(n),
        quality={"wikitext2": np.array([10.0, 12.0, 14.0, 20.0])},
        metric={"wikitext2": "perplexity"},
        labels={},
        cost={
            "prefill_speedup": median,
            "prefill_speedup_low": median - [0, 0.1, 0, 0.3],
            "prefill_speedup_high": median + [0, 0.2, 0, 0.05],
        },
    )
    (trace,) = [t for t in figures.sweep_cost_figure(table).to_dict()["data"] if t.get("name") == "steps"]
    x = _floats(trace["x"])
    finite = ~np.isnan(x)
    np.testing.assert_allclose(x[finite], [1.0, 1.2, 1.6])  # the unmeasured step is left out
    np.testing.assert_allclose(_floats(trace["error_x"]["array"])[finite], [0, 0.2, 0.05], atol=1e-12)
    np.testing.assert_allclose(_floats(trace["error_x"]["arrayminus"])[finite], [0, 0.1, 0.3], atol=1e-12)
    assert "repeats" in trace["hovertemplate"]
    del table.cost["prefill_speedup_low"], table.cost["prefill_speedup_high"]  # a table without the spread: no bars
    (trace,) = [t for t in figures.sweep_cost_figure(table).to_dict()["data"] if t.get("name") == "steps"]
    assert "error_x" not in trace
