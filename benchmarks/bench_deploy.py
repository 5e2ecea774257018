"""What users see after deploying: speed and memory of exported subnetworks against the dense model.

The embedded model and its exports at the trajectory steps nearest 20, 30, 40 and 50% parameter
sparsity (the schedule's ``--max-sparsity`` is a structural ratio: 0.6 reaches ~0.55 parameter
sparsity on SmolLM2-135M). For each model:

  prefill  tokens/s, batch 8 x 256 tokens: one forward that fills the KV cache and returns the next
           token's logits (``logits_to_keep=1``, what ``generate`` does with the prompt)
  decode   tokens/s, batch 1, greedy, one token per forward with the KV cache, after a 32-token prompt
  memory   peak over one prefill and one decode, each model alone in its own process: on CPU the
           resident set (sampled) minus the process's before the model was loaded; on GPU the CUDA
           allocator's peak (weights included)

each also as a ratio to dense measured in the same run. Timing runs every model in one process with
their repeats interleaved, so that a busy machine slows them alike. Target at 50%: prefill >= 1.6x dense.
Exports are the per-layer kind (``load_pruned``, the folder's own modeling code); ``--uniform``
measures the uniform exports instead (stock modeling code, widths per UNIFORM_RULE).

    python benchmarks/bench_deploy.py                                # CPU, float32
    python benchmarks/bench_deploy.py --threads 1                    # a CPU shared with other work
    python benchmarks/bench_deploy.py --quick                        # smoke check (~1 min)
    python benchmarks/bench_deploy.py --device cuda --dtype bfloat16  # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PeakMemory, machine, median, rss_bytes, table, timed, write_result  # noqa: E402

FULL = dict(
    batch=8,
    seq_len=256,
    prompt_len=32,
    new_tokens=64,
    repeats=3,
    sparsities="0.2,0.3,0.4,0.5",
    num_samples=16,
    calib_seq_len=128,
    steps=12,
)
QUICK = dict(
    batch=2,
    seq_len=64,
    prompt_len=8,
    new_tokens=8,
    repeats=1,
    sparsities="0.3,0.5",
    num_samples=4,
    calib_seq_len=64,
    steps=3,
)


# ---- workers (subprocesses) --------------------------------------------------------------------
def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _cache_of(output):
    cache = getattr(output, "cache", None)  # transformers >= 5.x names it `cache`
    return cache if cache is not None else output.past_key_values


class Runner:
    """One loaded model with its prefill and decode workloads (same inputs for every model)."""

    def __init__(self, model_spec: dict, spec: dict):
        import inspect

        import torch

        from gisp_engine import load_model, load_pruned

        device = self.device = spec["device"]
        if model_spec["kind"] == "dense":
            self.model = load_model(model_spec["path"], device, spec["dtype"]).model
        else:
            self.model = load_pruned(model_spec["path"], device, spec["dtype"]).model
        params = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        gen = torch.Generator().manual_seed(0)
        vocab = self.model.config.vocab_size
        self.batch = torch.randint(0, vocab, (spec["batch"], spec["seq_len"]), generator=gen).to(device)
        self.prompt = torch.randint(0, vocab, (1, spec["prompt_len"]), generator=gen).to(device)

    def prefill(self) -> float:
        took: list[float] = []
        with timed(took):
            self.model(input_ids=self.batch, use_cache=True, logits_to_keep=1)
            _sync(self.device)
        return took[0]

    def decode(self, steps: int) -> float:
        out = self.model(input_ids=self.prompt, use_cache=True, logits_to_keep=1)
        cache, token = _cache_of(out), out.logits[:, -1:].argmax(-1)
        _sync(self.device)
        took: list[float] = []
        with timed(took):
            for _ in range(steps):
                out = self.model(input_ids=token, use_cache=True, **{self.cache_arg: cache})
                cache, token = _cache_of(out), out.logits[:, -1:].argmax(-1)
            _sync(self.device)
        return took[0]


def timing_worker(spec: dict) -> list[dict]:
    """All models in one process, their repeats interleaved, so that load on a shared machine hits all alike."""
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    runners = [Runner(m, spec) for m in spec["models"]]
    prefill_s = [[] for _ in runners]
    decode_s = [[] for _ in runners]
    with torch.inference_mode():
        for r in runners:  # warm-up: allocator pools, lazy kernels
            r.prefill()
            r.decode(2)
        for _ in range(spec["repeats"]):
            for i, r in enumerate(runners):
                prefill_s[i].append(r.prefill())
        for _ in range(spec["repeats"]):
            for i, r in enumerate(runners):
                decode_s[i].append(r.decode(spec["new_tokens"]))
    return [
        {
            "prefill_s": p,
            "decode_s": d,
            "prefill_tok_s": spec["batch"] * spec["seq_len"] / median(p),
            "decode_tok_s": spec["new_tokens"] / median(d),
            "param_count": sum(x.numel() for x in r.model.parameters()),
            "weights_bytes": sum(x.numel() * x.element_size() for x in r.model.parameters()),
            "threads": torch.get_num_threads(),
        }
        for r, p, d in zip(runners, prefill_s, decode_s)
    ]


def memory_worker(spec: dict) -> dict:
    """Peak memory of one model (alone in its process) over one prefill and one decode."""
    import torch

    before_load = rss_bytes()
    runner = Runner(spec["models"][0], spec)
    with torch.inference_mode(), PeakMemory(spec["device"]) as mem:
        runner.prefill()
        runner.decode(spec["new_tokens"])
    return {"peak_bytes": mem.peak - (0 if spec["device"].startswith("cuda") else before_load)}


def run_worker(role: str, spec: dict):
    cmd = [sys.executable, __file__, "--worker", role, "--spec", json.dumps(spec)]
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1")
    if role == "memory":  # large blocks straight from mmap, so that freed tensors leave the resident set at once
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{role} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the run ------------------------------------------------------------------------------------
def trajectory_for(args):
    from gisp_engine import PruneConfig, prune
    from gisp_engine.pruning.cache import resolve_trajectory as _load_trajectory

    if args.trajectory:
        return _load_trajectory(args.trajectory)
    config = PruneConfig(
        model=args.model,
        num_samples=args.num_samples,
        seq_len=args.calib_seq_len,
        steps=args.steps,
        max_sparsity=args.max_sparsity,
        device=args.device,
        dtype=args.dtype,
    )
    print(
        f"trajectory: {args.steps} steps to structural ratio {args.max_sparsity} (cached after the first run)",
        file=sys.stderr,
    )
    return prune(config).trajectory


def export_points(args, traj, folder: Path) -> list[dict]:
    from gisp_engine import export_subnetwork, load_model

    points, seen = [], set()
    for target in (float(s) for s in args.sparsities.split(",")):
        step = traj.step_nearest_sparsity(target)
        if step in seen:
            continue
        seen.add(step)
        loaded = load_model(args.model, "cpu", "float32")  # exports are float32; workers cast to --dtype
        result = export_subnetwork(loaded, traj, step, folder / f"step-{step}", uniform=args.uniform)
        del loaded
        points.append(
            {"target": target, "step": step, "param_sparsity": result.param_sparsity, "path": str(result.folder)}
        )
        print(f"exported step {step} (parameter sparsity {result.param_sparsity:.3f})", file=sys.stderr)
    return points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--quick", action="store_true", help="small shapes, two sparsities, 3-step trajectory")
    ap.add_argument(
        "--trajectory", default=None, help="use this trajectory (folder or cache key) instead of building one"
    )
    ap.add_argument("--max-sparsity", type=float, default=0.6, help="structural ratio of the trajectory built")
    ap.add_argument("--uniform", action="store_true", help="measure uniform exports instead of per-layer ones")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each worker (0: torch's default)")
    for name, value in FULL.items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=None, help=f"default {value}")
    ap.add_argument("--worker", choices=["timing", "memory"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        role = timing_worker if args.worker == "timing" else memory_worker
        print(json.dumps(role(json.loads(args.spec))))
        return
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    traj = trajectory_for(args)
    common = {
        k: getattr(args, k)
        for k in ("device", "dtype", "batch", "seq_len", "prompt_len", "new_tokens", "repeats", "threads")
    }
    with tempfile.TemporaryDirectory(prefix="gisp-bench-deploy-") as tmp:
        points = export_points(args, traj, Path(tmp))
        rows = [{"name": "dense", "target": 0.0, "step": 0, "param_sparsity": 0.0, "path": args.model, "kind": "dense"}]
        rows += [{"name": f"near {p['target']:.0%}", **p, "kind": "export"} for p in points]
        models = [{"kind": r["kind"], "path": r["path"]} for r in rows]
        print("timing (all models in one process, interleaved)", file=sys.stderr)
        for row, figures in zip(rows, run_worker("timing", {**common, "models": models})):
            row.update(figures)
        for row, model in zip(rows, models):
            print(f"peak memory of {row['name']} (its own process)", file=sys.stderr)
            row.update(run_worker("memory", {**common, "models": [model]}))
    dense = rows[0]
    for r in rows:
        r["prefill_x"] = r["prefill_tok_s"] / dense["prefill_tok_s"]
        r["decode_x"] = r["decode_tok_s"] / dense["decode_tok_s"]
        r["memory_x"] = r["peak_bytes"] / dense["peak_bytes"]
        r.pop("path", None)
        r.pop("kind", None)

    mib = 2**20
    kind = "uniform" if args.uniform else "per-layer"
    print(
        f"{args.model} on {args.device} {args.dtype}: dense vs {kind} exports; prefill {args.batch} x {args.seq_len} "
        f"tokens, decode batch 1 x {args.new_tokens} tokens after {args.prompt_len}; {rows[0]['threads']} torch "
        f"threads, median of {args.repeats}"
    )
    print(
        table(
            [
                [
                    r["name"],
                    r["step"],
                    r["param_sparsity"],
                    f"{r['param_count'] / 1e6:.1f}",
                    f"{r['prefill_tok_s']:.0f}",
                    r["prefill_x"],
                    f"{r['decode_tok_s']:.1f}",
                    r["decode_x"],
                    f"{r['peak_bytes'] / mib:.0f}",
                    r["memory_x"],
                ]
                for r in rows
            ],
            [
                "model",
                "step",
                "param sparsity",
                "params (M)",
                "prefill tok/s",
                "x dense",
                "decode tok/s",
                "x dense",
                "peak MiB",
                "x dense",
            ],
        )
    )
    at_half = min(rows[1:], key=lambda r: abs(r["param_sparsity"] - 0.5), default=None)
    if at_half is not None:
        verdict = "meets" if at_half["prefill_x"] >= 1.6 else "misses"
        print(
            f"prefill at {at_half['param_sparsity']:.3f} parameter sparsity: {at_half['prefill_x']:.2f}x dense "
            f"({verdict} the 1.6x target)"
        )
    payload = {
        "args": vars(args),
        "machine": machine(),
        "kind": kind,
        "trajectory": traj.key,
        "trajectory_steps": [{"step": s.step, "param_sparsity": s.param_sparsity} for s in traj.steps],
        "memory": "CPU: sampled RSS peak minus RSS before loading; CUDA: allocator peak",
        "rows": rows,
    }
    suffix = "_quick" if args.quick else ""
    path = write_result(
        f"bench_deploy_{args.device.replace(':', '')}_{args.dtype}{'_uniform' if args.uniform else ''}{suffix}", payload
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
