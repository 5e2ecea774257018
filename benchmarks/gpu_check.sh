#!/usr/bin/env bash
# The GPU check, one script (well inside 10 minutes on one H200):
#   1. the test suite's GPU-relevant tests (-m gpu: every test there runs on the CPU and on CUDA)
#   2. bench_scoring.py in bfloat16
#   3. 2 pruning steps of a random-init Llama-3.1-8B at the paper's calibration size per step
#      (2,000 x 256 tokens, bf16; a smaller micro-batch when the dry run says the default does not fit),
#      the time per step extrapolated to the paper's 112 steps, the peak memory against the dry run's estimate
#
#   bash benchmarks/gpu_check.sh                 # on a GPU machine
#   bash benchmarks/gpu_check.sh --device cpu    # its small CPU equivalent (2-layer 1B geometry, 8 x 64 tokens)
#
# It needs this checkout and what `make setup` installs, with a CUDA build of torch (pip picks one for
# torch==2.13.0 on Linux x86_64). Without .venv it uses a python3 whose torch sees a GPU (a GPU image's own),
# with this checkout on PYTHONPATH. No data dir and no network: calibration text and models are made here.
# Results: benchmarks/results/ and $GPU_CHECK_OUT (default $OUT, else /tmp/gpu-check).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
if [ "${1:-}" = "--device" ]; then DEVICE=$2; fi
WORK=${GPU_CHECK_WORK:-/tmp/gpu-check-work}
LOGS=${GPU_CHECK_OUT:-${OUT:-/tmp/gpu-check}}
mkdir -p "$WORK" "$LOGS"
export PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error HF_HUB_OFFLINE=1 GISP_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export GISP_CACHE_DIR=${GISP_CACHE_DIR:-$WORK/cache}   # the check's trajectories stay out of the project cache

cuda_ok() { "$1" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
if [ -n "${GISP_PYTHON:-}" ]; then PY=$GISP_PYTHON
elif [ -x .venv/bin/python ] && { [ "$DEVICE" = cpu ] || cuda_ok .venv/bin/python; }; then PY=.venv/bin/python
elif [ "$DEVICE" != cpu ] && cuda_ok python3; then PY=python3
elif [ "$DEVICE" = cpu ] && command -v python3 >/dev/null; then PY=python3
else
  echo "gpu_check: no Python whose torch sees a GPU: run 'make setup' on this machine (a CUDA build of torch" \
       "comes with torch==2.13.0 from PyPI on Linux x86_64), or set GISP_PYTHON" >&2
  exit 2
fi
missing=$("$PY" -c '
import importlib.util as u
need = ["torch", "transformers", "safetensors", "tokenizers", "filelock", "tqdm", "numpy", "pytest", "accelerate"]
print(" ".join(n for n in need if u.find_spec(n) is None))')
if [ -n "$missing" ]; then echo "gpu_check: $PY lacks $missing (make setup installs them)" >&2; exit 2; fi
"$PY" -c 'import torch, transformers; print("python", __import__("sys").version.split()[0], "torch", torch.__version__,
  "transformers", transformers.__version__, "cuda", torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' | tee "$LOGS/versions.txt"

if [ "$DEVICE" = cpu ]; then
  # float32 steps and a tiny bf16 scoring workload: on a CPU without AVX512-BF16/AMX, torch's bf16 matmuls
  # in the backward pass run ~60x slower than float32 (a 512x2048x2048 linear, forward and backward: 0.23 vs
  # 15 GFLOPS on a 2-core AVX2 machine)
  GEOMETRY=(--geometry llama-3.2-1b --layers 2 --num-samples 8 --seq-len 64 --dtype float32)
  SCORING=(--batch 2 --seq-len 8 --repeats 1 --skip-runs --sums-seq-len 8 --sums-micro-batch 1)
else
  GEOMETRY=(--geometry llama-3.1-8b --num-samples "${GPU_CHECK_SAMPLES:-2000}" --seq-len 256 --dtype bfloat16)
  SCORING=(--batch 8 --seq-len 256 --repeats 3)
fi
status=0
stage() { echo; echo "=== $1 ($(date +%T))"; }

stage "1. GPU-relevant tests (-m gpu) on $DEVICE"
"$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$LOGS/tests.txt" || status=1

stage "2. bench_scoring.py in bfloat16"
SMOL=cache/models/smollm2-135m
if [ ! -f "$SMOL/model.safetensors" ]; then   # no embedded wheel here: the same geometry, random weights
  SMOL=$("$PY" benchmarks/_geometries.py smollm2-135m "$WORK/smollm2-135m-random" --device "$DEVICE" | tail -1)
fi
"$PY" benchmarks/bench_paper_step.py --help >/dev/null   # (imports check)
CALIB="$WORK/calib-scoring.txt"
"$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); from bench_paper_step import calibration_text; \
from pathlib import Path; calibration_text(Path('$CALIB'), 200000)"
"$PY" benchmarks/bench_scoring.py --model "$SMOL" --calib "$CALIB" --device "$DEVICE" --dtype bfloat16 "${SCORING[@]}" \
  2>&1 | grep -v "Loading weights" | tee "$LOGS/bench_scoring.txt" || status=1

stage "3. pruning steps at the paper's calibration size, extrapolated; peak against the dry run"
"$PY" benchmarks/bench_paper_step.py --device "$DEVICE" "${GEOMETRY[@]}" --work "$WORK/paper-step" \
  2>&1 | grep -v "Loading weights\|Writing model" | tee "$LOGS/paper_step.txt" || status=1

cp benchmarks/results/bench_scoring*.json benchmarks/results/bench_paper_step_*.json "$LOGS/" 2>/dev/null
echo; echo "gpu_check: $( [ $status = 0 ] && echo passed || echo FAILED ) on $DEVICE; logs in $LOGS"
exit $status
