#!/usr/bin/env bash
# Issue 15's GPU checks in one command, on the lent GPU machine (its image's python3; not CI):
#   OUT=results/gpu bash experiments/gpu_checks.sh
# 1. the CUDA-graph and engine parity tests on the GPU (BLOCKLLM_TEST_DEVICE=cuda; the
#    references run on its CPU, with torch ops: BLOCKLLM_NATIVE=0 spares the C++ build);
# 2. experiments/gpu_decode.py: Llama-2-7B-shaped batch-1 TPOT against the HBM roofline and
#    NVML utilization at saturation, CUDA graphs on and off, Triton kernels on and off.
# The three steps' limits (120 + TEST_S + DECODE_S) stay under the device tool's 600 s.
set -o pipefail
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv \
  > "$OUT/nvidia-smi.txt" 2>&1
# 0. the Triton kernels against the torch path in each dtype (a failure with its traceback)
timeout 120 python3 -m blockllm.models.gpu_kernels > "$OUT/gpu_tests.txt" 2>&1
BLOCKLLM_NATIVE=0 BLOCKLLM_TEST_DEVICE=cuda timeout "${TEST_S:-150}" python3 -m pytest -q \
  -p no:cacheprovider tests/test_graphs.py tests/test_engine.py \
  -k "graph or outputs_equal or buckets or fits" 2>&1 | tail -40 >> "$OUT/gpu_tests.txt"
echo "tests rc=$?" >> "$OUT/gpu_tests.txt"
cat "$OUT/gpu_tests.txt"
PYTHONUNBUFFERED=1 timeout "${DECODE_S:-380}" python3 -m experiments.gpu_decode --out "$OUT" \
  --name "${NAME:-gpu_decode}" 2>&1 | tee "$OUT/gpu_decode.log"
