#!/usr/bin/env bash
# The prepared device check for the Triton `gla` kernels, one call on a CUDA GPU:
# installs this package (no dependencies: the device image has torch, triton, transformers) and
# the carried fla wheels, runs the gpu-marked tests (compiled kernels, bf16 vs the float32 torch
# backend), then the benchmark (ours vs fla vs SDPA). Logs and the table go to $OUT.
#
# Prepare on this machine (fla is pure Python; the device cannot download):
#   pip download --no-deps -d .whl flash-linear-attention fla-core
# Then, through the device tool:  bash scripts/gpu_check.sh   with carry [".whl"], timeout_s ~540
#   QUICK=1 bash scripts/gpu_check.sh    # two small fla shapes, no T sweep (a first smoke run)
set -uo pipefail
OUT=${OUT:-gpu_out}
PY=${PY:-python3}
mkdir -p "$OUT"

{ nvidia-smi; "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"; } \
    > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt" | tail -1

if ls .whl/*.whl > /dev/null 2>&1; then
    "$PY" -m pip install --no-deps --no-index .whl/*.whl > "$OUT/pip.txt" 2>&1 || echo "gpu_check: fla wheels did not install (see pip.txt)"
fi
"$PY" -m pip install --no-deps --no-build-isolation -e . >> "$OUT/pip.txt" 2>&1 || { echo "gpu_check: pip install -e . failed"; tail -20 "$OUT/pip.txt"; exit 1; }

# -P: the repository root stays off the import path (its kernels/ and data/ folders would shadow packages)
TRITON_INTERPRET=0 timeout 240 "$PY" -P -m pytest -p no:cacheprovider -q -m gpu tests/kernels/test_gla_triton.py \
    > "$OUT/pytest_gpu.txt" 2>&1
echo "gpu_check: gpu tests exited $? ($(tail -1 "$OUT/pytest_gpu.txt"))"

BENCH_ARGS=()
[ "${QUICK:-0}" = "1" ] && BENCH_ARGS+=(--quick)
TRITON_INTERPRET=0 timeout 420 "$PY" -P scripts/bench_gla_gpu.py "${BENCH_ARGS[@]}" > "$OUT/bench_gla_gpu.md" 2> "$OUT/bench_gla_gpu.err"
echo "gpu_check: benchmark exited $?"
tail -40 "$OUT/bench_gla_gpu.md"
