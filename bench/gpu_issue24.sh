#!/usr/bin/env bash
# Issue 24's GPU measurements in one run (about 6 minutes), for a CUDA machine that has PyTorch
# and JAX but no TensorFlow, Keras or diffusers and no package index: the device tool's H200.
#
# Here, with PyPI, once (the wheels folder is git-ignored; carry it):
#     pip download --no-deps -d wheels --only-binary=:all: --python-version 3.12 \
#         --platform manylinux2014_x86_64 keras==3.15.1 diffusers==0.42.1 namex optree \
#         importlib_metadata
# On the GPU machine, from the repository root:
#     bash bench/gpu_issue24.sh          # device tool: run(command=..., carry=["wheels"])
#
# Writes to $OUT (default bench/gpu_out): bench_vs_diffusers.log and its JSON (diffusers' eager
# step, our PyTorch and JAX through fit, ddpm_cifar10 at batch 128 in bf16), and
# profile_<variant>.log (host time against kernel time a step: JAX, PyTorch with the preset's
# dropout, which keeps the eager step, PyTorch at dropout 0, captured as one CUDA graph, and
# diffusers). The issue's targets: PyTorch at least 1.3x diffusers' training images/s, JAX at
# least 35% MFU through fit.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
python3 -m pip install --quiet --no-deps --no-index wheels/*.whl 2>&1 | tail -3
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  git log -1 --format=%H 2>/dev/null || true
  python3 -c "import torch, jax, keras; print(torch.__version__, jax.__version__, keras.__version__)"
} | tee "$OUT/machine.txt"

timeout 240 python3 bench/bench_vs_diffusers.py --batch-size 128 --precision bfloat16 \
  --variants peak,diffusers,torch,jax --train-steps 20 --warmup-steps 5 2>&1 |
  tee "$OUT/bench_vs_diffusers.log"
cp bench/bench_vs_diffusers_cuda.json "$OUT/" 2>/dev/null
KERAS_BACKEND=jax timeout 90 python3 bench/profile_gpu_step.py 2>&1 | tee "$OUT/profile_jax.log"
KERAS_BACKEND=torch timeout 60 python3 bench/profile_gpu_step.py 2>&1 |
  tee "$OUT/profile_torch.log"
KERAS_BACKEND=torch timeout 60 python3 bench/profile_gpu_step.py --dropout 0 2>&1 |
  tee "$OUT/profile_torch_graph.log"
timeout 45 python3 bench/profile_gpu_step.py --diffusers 2>&1 | tee "$OUT/profile_diffusers.log"
