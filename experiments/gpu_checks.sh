#!/usr/bin/env bash
# Issue 15's GPU checks in one command, on the lent GPU machine (its image's python3; not CI):
#   OUT=results/gpu bash experiments/gpu_checks.sh
# 1. the CUDA-graph and engine parity tests on the GPU (BLOCKLLM_TEST_DEVICE=cuda; the
#    references run on its CPU, with torch ops: BLOCKLLM_NATIVE=0 spares the C++ build);
# 2. experiments/gpu_decode.py: Llama-2-7B-shaped batch-1 TPOT against the HBM roofline and
#    NVML utilization at saturation, CUDA graphs on and off, Triton kernels on and off.
# The three steps' limits (90 + TEST_S + DECODE_S = 540 s by default) stay under the device
# tool's 600 s a command, so a step that hangs still leaves the others' files. The whole pytest
# log is kept (pytest.txt); gpu_tests.txt has its tail and each step's exit code.
set -o pipefail
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv \
  > "$OUT/nvidia-smi.txt" 2>&1
df -h /dev/shm /tmp >> "$OUT/nvidia-smi.txt" 2>&1  # the 13 GB zoo goes to /dev/shm
export PYTHONUNBUFFERED=1
# 0. the Triton kernels against the torch path in each dtype (a failure with its traceback)
timeout 90 python3 -m blockllm.models.gpu_kernels > "$OUT/gpu_tests.txt" 2>&1
echo "kernels rc=$?" >> "$OUT/gpu_tests.txt"
BLOCKLLM_NATIVE=0 BLOCKLLM_TEST_DEVICE=cuda timeout "${TEST_S:-120}" python3 -m pytest -q \
  -p no:cacheprovider tests/test_graphs.py tests/test_engine.py \
  -k "graph or outputs_equal or buckets or fits" 2>&1 | tee "$OUT/pytest.txt" | tail -40 \
  >> "$OUT/gpu_tests.txt"
echo "tests rc=$?" >> "$OUT/gpu_tests.txt"
cat "$OUT/gpu_tests.txt"
# NAME defaults to the card: a run without a kind may land on an H100 or an H200
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 \
  | grep -oiE 'h100|h200|a100|l40s' | tr 'A-Z' 'a-z')
timeout "${DECODE_S:-330}" python3 -m experiments.gpu_decode --out "$OUT" \
  --name "${NAME:-gpu_decode-${GPU:-gpu}}" 2>&1 | tee "$OUT/gpu_decode.log"
