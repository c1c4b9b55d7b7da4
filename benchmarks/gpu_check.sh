#!/usr/bin/env bash
# One-shot GPU measurement of embedding and relevance speed against the naive pipeline, sized for the
# lent-device budget (one call, < 10 min).
# Run from the repository root on the GPU machine: `bash benchmarks/gpu_check.sh`; results go to
# $OUT (or ./gpu-results): the device, the embed_speed table (naive vs ours, forward-only, compiled,
# relevance last-block and rollout) and the memory-flat table. Needs torch, transformers, torchvision,
# pandas, pyarrow, scipy, scikit-learn, pillow (all in the H200 image), not streamlit.
# Smaller dry run anywhere: N=64 REL_N=2 ROUNDS=1 MEM_SIZES=200,400 OUT=/tmp/x bash benchmarks/gpu_check.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out="${OUT:-gpu-results}"
mkdir -p "$out"
scratch="${SCRATCH:-/tmp/perf}"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, torchvision; print('torch', torch.__version__, 'transformers', transformers.__version__, 'torchvision', torchvision.__version__)"
  nproc
} 2>&1 | tee "$out/device.txt"
timeout 420 python3 benchmarks/embed_speed.py --n "${N:-8192}" --rel-n "${REL_N:-1024}" \
  --rel-methods last-block,rollout --rounds "${ROUNDS:-2}" --compile --scratch "$scratch" 2>&1 \
  | grep -v Warning | tee "$out/embed_speed.txt"
timeout 120 python3 benchmarks/memory_flat.py --sizes "${MEM_SIZES:-1000,8000}" --scratch "$scratch" 2>&1 \
  | tee "$out/memory_flat.txt"
