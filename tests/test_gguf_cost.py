"""Cost in llama.cpp (``gisp sweep --cost --runtime llamacpp``): each step's GGUF timed against the dense GGUF.

Tiny models, short workloads (16-32 prefill tokens, 4 decoded, 3 repeats, 1 thread): the figures are noise
here; what is checked is what they are (rows per step, ratios with their spread, the file timed, the series
they form, what is remembered) and every refusal.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from exporting import STEP, flap_trajectory, synthetic_trajectory
from needs import require as _require

from gisp_engine import GispError, load_model
from gisp_engine.choose.sweep import SweepRequest, pending_points, run_sweep
from gisp_engine.choose.table import sweep_table
from gisp_engine.cli import main
from gisp_engine.evaluation.cost import CostSpec
from gisp_engine.evaluation.cost_llamacpp import GGUFCostSpec, spec_from_dict
from gisp_engine.export.gguf import export_gguf
from gisp_engine.jobs import background as jobs
from gisp_engine.model import llamacpp
from gisp_engine.model.surgery import linear_weight_count
from gisp_engine.pruning.trajectory import Trajectory

pytestmark = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")

SPEC = GGUFCostSpec(seq_len=32, new_tokens=4, repeats=3, threads=1)
FAST = ["--cost-seq-len", "16", "--cost-new-tokens", "4", "--cost-repeats", "3", "--cost-threads", "1"]


@pytest.fixture(scope="module", autouse=True)
def runtime():
    if not llamacpp.available():
        _require(f"the llama.cpp runtime ({llamacpp.INSTALL_HINT}; make setup installs it)")


@pytest.fixture
def saved(tiny_models, tmp_path):
    """(loaded tiny Llama, its synthetic trajectory as saved and loaded back, the model's folder)."""
    model = tiny_models[("llama", True)]
    loaded = load_model(str(model), dtype="float32")
    traj = Trajectory.load(synthetic_trajectory(loaded, "query").save(tmp_path / "traj"))
    return loaded, traj, model


def scratch_left(cache: Path) -> list[str]:
    exports = cache / "exports"
    return [p.name for p in exports.iterdir()] if exports.is_dir() else []


def test_llamacpp_cost_sweep(saved, isolated_cache, tmp_path):
    loaded, traj, _ = saved
    dense_params = linear_weight_count(loaded.model, loaded.adapter)
    report = run_sweep(traj, loaded, SweepRequest(tasks=(), cost=SPEC), copy_model=False)
    assert [r["step"] for r in report.rows] == list(range(STEP + 1)) and not any(r["cached"] for r in report.rows)
    # a llama.cpp cost alone never slices the caller's model (each GGUF is written from a copy)
    assert linear_weight_count(loaded.model, loaded.adapter) == dense_params
    assert scratch_left(isolated_cache) == []  # the GGUFs timed were written into a scratch folder, now gone

    table = sweep_table(traj)
    cost = table.cost
    assert table.cost_label == (
        "llama.cpp cost (per-layer GGUF f16, 32 prefill, decode 4 tokens, cpu, 1 threads, "
        "median of 3 interleaved repeats)"
    )
    assert cost["prefill_speedup"][0] == cost["decode_speedup"][0] == cost["weight_ratio"][0] == 1.0
    for what in ("prefill", "decode"):
        low, mid, high = (cost[f"{what}_speedup{s}"] for s in ("_low", "", "_high"))
        assert np.all(low <= mid) and np.all(mid <= high) and np.all(low > 0)
        assert np.all(cost[f"{what}_tok_s"] > 0)
    # the file timed is the step's GGUF: smaller with every step, and exactly what `gisp export --format gguf` writes
    sizes = cost["weight_bytes"]
    assert np.all(np.diff(sizes) < 0), sizes
    np.testing.assert_array_equal(sizes, cost["file_bytes"])
    np.testing.assert_allclose(cost["weight_ratio"], sizes / sizes[0])
    exported = export_gguf(load_model(str(saved[2]), dtype="float32"), traj, STEP, tmp_path / "g", outtype="f16")
    assert sizes[STEP] == exported.gguf_path.stat().st_size
    assert np.all(np.diff(cost["param_count"]) < 0)  # llama.cpp's own count of each file's parameters
    assert np.all(cost["peak_bytes"] > 0)
    row = report.rows[STEP]
    assert row["details"]["arch"] == "deci" and row["details"]["padding_overhead"] > 0  # step 3 has uneven groups

    # remembered: the same request again loads no model and computes nothing
    again = run_sweep(
        traj,
        lambda: pytest.fail("a remembered sweep loaded the model"),
        SweepRequest(tasks=(), cost=SPEC),
        dtype="float32",
    )
    assert all(r["cached"] for r in again.rows)
    assert [r["details"]["prefill_s"] for r in again.rows] == [r["details"]["prefill_s"] for r in report.rows]
    # another GGUF type, layout or alignment is another measurement, not found among these
    for changed in ({"outtype": "q8_0"}, {"layout": "uniform"}, {"align": 8}):
        other = spec_from_dict({**SPEC.to_dict(), **changed})
        assert len(pending_points(traj, SweepRequest(tasks=(), cost=other), "float32")) == STEP + 1, changed

    # a PyTorch cost of the same trajectory is another series; the table shows one at a time, named by runtime
    torch_spec = CostSpec(batch=1, seq_len=8, new_tokens=2, repeats=3, threads=1)
    run_sweep(traj, loaded, SweepRequest(tasks=(), cost=torch_spec, steps=(0, STEP)))
    series = sweep_table(traj).alternatives["cost"]
    assert sorted(s.label.split(" cost ")[0] for s in series) == ["PyTorch", "llama.cpp"]
    by_runtime = {s.label.split(" cost ")[0]: s for s in series}
    assert by_runtime["llama.cpp"].steps == tuple(range(STEP + 1)) and by_runtime["PyTorch"].steps == (0, STEP)
    gguf = sweep_table(traj, prefer={"cost": by_runtime["llama.cpp"].key})
    np.testing.assert_array_equal(gguf.cost["weight_bytes"], sizes)
    torch_table = sweep_table(traj, prefer={"cost": by_runtime["PyTorch"].key})
    assert torch_table.cost_label.startswith("PyTorch cost (batch 1 x 8 prefill")
    assert torch_table.cost["weight_bytes"][STEP] != sizes[STEP]


def test_requests_with_a_llamacpp_cost_round_trip():
    request = SweepRequest(tasks=("wikitext2",), cost=GGUFCostSpec(outtype="Q4_K_M", layout="uniform", align=64))
    assert request.cost.outtype == "q4_k_m"
    assert SweepRequest.from_dict(json.loads(json.dumps(request.to_dict()))) == request
    old = SweepRequest(tasks=("wikitext2",), cost=CostSpec()).to_dict()  # as stored before llama.cpp costs
    assert "runtime" not in old["cost"] and SweepRequest.from_dict(old).cost == CostSpec()
    assert GGUFCostSpec(align=1) == GGUFCostSpec()  # rounds nothing: one measurement
    for bad, message in (
        ({"layout": "diagonal"}, "unknown GGUF layout"),
        ({"repeats": 2}, "at least 3"),
        ({"align": 0}, "at least 1"),
        ({"runtime": "onnx"}, "unknown cost runtime"),
    ):
        with pytest.raises(GispError, match=message):
            spec_from_dict({**GGUFCostSpec().to_dict(), **bad})


def test_cli_llamacpp_cost_and_its_refusals(saved, tiny_models, isolated_cache, tmp_path, capsys, monkeypatch):
    _, traj, model = saved
    base = ["sweep", "--trajectory", str(traj.path), "--model", str(model), "--task", "none"]
    assert main([*base, "--cost", "--runtime", "llamacpp", "--outtype", "q8_0", *FAST, "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cost_label"].startswith("llama.cpp cost (per-layer GGUF q8_0, 16 prefill")
    assert [r["step"] for r in out["rows"]] == list(range(STEP + 1))
    assert all(r["prefill_speedup_low"] <= r["prefill_speedup"] <= r["prefill_speedup_high"] for r in out["rows"])
    assert scratch_left(isolated_cache) == []

    qwen3 = tiny_models[("qwen3", True)]
    qwen3_traj = synthetic_trajectory(load_model(str(qwen3), dtype="float32"), "query").save(tmp_path / "q3")
    qwen2 = tiny_models[("qwen2", True)]
    flap = flap_trajectory(load_model(str(qwen2), dtype="float32")).save(tmp_path / "flap")
    llama = ["--cost", "--runtime", "llamacpp"]
    for args, message in (
        ([*base, *llama, "--outtype", "q9"], "unknown --outtype 'q9'"),
        ([*base, "--outtype", "f16"], "--outtype sets how cost is measured: add --cost"),
        ([*base, "--runtime", "llamacpp"], "add --cost"),
        ([*base, *llama, "--cost-batch", "2"], "--cost-batch is PyTorch's"),
        ([*base, "--cost", "--uniform"], "--uniform describes the GGUF that --runtime llamacpp times"),
        ([*base, *llama, "--align", "0"], "--align must be a whole number"),
        (
            ["sweep", "--trajectory", str(qwen3_traj), "--model", str(qwen3), "--task", "none", *llama],
            "Qwen3's q/k norms have no place in llama.cpp's per-layer architecture (deci): export it with --uniform",
        ),
        (
            ["sweep", "--trajectory", str(flap), "--model", str(qwen2), "--task", "none", *llama, "--uniform"],
            "qwen2 has no o_proj/down_proj biases for FLAP's bias compensation",
        ),
    ):
        assert main([*args, *FAST]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (args, err)
    # no llama.cpp here: one line naming the install, before the model is loaded
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    monkeypatch.setattr("gisp_engine.model.loading.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main([*base, *llama, *FAST, "--outtype", "f32"]) == 2
    err = capsys.readouterr().err
    assert "llama.cpp runtime is not installed" in err and err.count("\n") == 1
    assert scratch_left(isolated_cache) == []


def test_a_background_sweep_refuses_a_bad_llamacpp_cost_before_starting(saved, tiny_models, tmp_path, monkeypatch):
    _, traj, _ = saved
    with pytest.raises(GispError, match="unknown --outtype 'q9'"):
        jobs.submit_sweep(traj, SweepRequest(tasks=(), cost=GGUFCostSpec(outtype="q9")))
    qwen3 = tiny_models[("qwen3", True)]
    qwen3_traj = Trajectory.load(
        synthetic_trajectory(load_model(str(qwen3), dtype="float32"), "query").save(tmp_path / "q3")
    )
    with pytest.raises(GispError, match="export it with --uniform"):
        jobs.submit_sweep(qwen3_traj, SweepRequest(tasks=(), cost=GGUFCostSpec()))
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(GispError, match="llama.cpp runtime is not installed"):
        jobs.submit_sweep(traj, SweepRequest(tasks=(), cost=GGUFCostSpec()))
    assert jobs.list_jobs() == []


@pytest.fixture
def one_core():
    """This process and the jobs it starts on one core: the cost's default threads (every core this process may
    use) is then 1; llama.cpp's spinning threads on a busy 2-core machine take minutes for what one does in seconds."""
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    yield
    os.sched_setaffinity(0, cores)


def test_choose_offers_llamacpp_cost_and_says_which_runtime(saved, isolated_cache, one_core, no_jobs_left):
    from apptest import no_errors, open_page, wait_for

    loaded, traj, _ = saved
    listed = dataclasses.replace(traj, meta={**traj.meta, "objective": {"objective": "perplexity"}})
    path = str(listed.save(isolated_cache / "trajectories" / traj.key))  # where the app lists it
    traj = Trajectory.load(path)
    torch_spec = CostSpec(batch=1, seq_len=8, new_tokens=2, repeats=3, threads=1)
    run_sweep(traj, loaded, SweepRequest(tasks=(), cost=torch_spec))  # a PyTorch cost series is remembered
    at = open_page("pages/6_Choose.py", select=path)
    no_errors(at)
    at.number_input(key="sweep_limit_wikitext2").set_value(1)  # perplexity too, on one window
    at.checkbox(key="sweep_cost").check()
    at.selectbox(key="sweep_runtime").set_value("llamacpp")
    at.number_input(key="sweep_align").set_value(64)  # wider than the tiny MLP (48): refused, nothing started
    go = next(b for b in at.button if b.label.startswith("Sweep every step"))
    go.click().run()
    assert any("Cannot start the sweep: " in e.value and "--align" in e.value for e in at.error)
    assert jobs.list_jobs() == []

    at.number_input(key="sweep_align").set_value(0)
    at.selectbox(key="sweep_outtype").set_value("q8_0")
    next(b for b in at.button if b.label.startswith("Sweep every step")).click().run()
    no_errors(at)
    job = wait_for(lambda: (j := jobs.list_jobs()) and not j[0].active and j[0], timeout=300)
    assert job.state == "done", job.error
    assert job.config["request"]["cost"]["runtime"] == "llamacpp"
    at.run()
    no_errors(at)
    # the series the sweep asked for is shown: llama.cpp's, the PyTorch one offered beside it
    picker = at.selectbox(key=f"choose_series_cost_{path}")
    assert picker.format_func(picker.value).startswith("llama.cpp cost (per-layer GGUF q8_0, 512 prefill")
    by_runtime = {a.label.split(" cost ")[0]: a.key for a in sweep_table(traj).alternatives["cost"]}
    assert sorted(by_runtime) == ["PyTorch", "llama.cpp"] and picker.value == by_runtime["llama.cpp"]
    at.number_input(key="choose_min_decode").set_value(0.01).run()
    no_errors(at)
    measured = [c.value for c in at.caption if c.value.startswith("Measured with: ")]
    assert measured and measured[0].startswith("Measured with: llama.cpp cost (per-layer GGUF q8_0")
    table = sweep_table(traj, prefer={"cost": picker.value})
    np.testing.assert_allclose(at.dataframe[-1].value["decode_speedup"], table.cost["decode_speedup"])
    picker.set_value(by_runtime["PyTorch"]).run()
    no_errors(at)
    measured = [c.value for c in at.caption if c.value.startswith("Measured with: ")]
    assert measured[0].startswith("Measured with: PyTorch cost (batch 1 x 8 prefill")
