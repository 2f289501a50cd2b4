#!/usr/bin/env bash
# The tensor engine's GPU check, for a machine with CUDA (about 2-4 minutes):
#   1. the CUDA/NCCL scenarios (pytest -m gpu: tests/tensor/test_gpu.py),
#   2. the device bookkeeping's tests (tests/tensor/test_devices.py, not marked gpu),
#   3. the NCCL reduce benchmark (benchmarks/tensor_gpu.py, 3 rounds).
# Run from anywhere: tests/tensor/run_gpu.sh [OUT_DIR]. Results (junit XML, the benchmark's JSON,
# nvidia-smi and the logs) go to OUT_DIR (default: $OUT, else ./gpu-check). Exits non-zero when a
# step fails or when CUDA is missing (the tests would only be skipped).
set -u -o pipefail
cd "$(dirname "$0")/../.."
out="${1:-${OUT:-gpu-check}}"
mkdir -p "$out"
status=0

{ nvidia-smi || true; } > "$out/nvidia-smi.txt" 2>&1
python3 - <<'EOF' 2>&1 | tee "$out/cuda.txt"
import torch, torch.distributed as dist
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      "devices", torch.cuda.device_count(), "nccl", dist.is_nccl_available())
raise SystemExit(0 if torch.cuda.is_available() else 3)
EOF
if [ "${PIPESTATUS[0]}" -ne 0 ]; then
  echo "no CUDA device here: nothing to check" >&2
  exit 3
fi

timeout 200 python3 -m pytest -q -m gpu tests/tensor --timeout=150 -rs \
  --junitxml="$out/pytest-gpu.xml" 2>&1 | tee "$out/pytest-gpu.log" || status=1
timeout 90 python3 -m pytest -q tests/tensor/test_devices.py --timeout=60 -rs \
  2>&1 | tee "$out/pytest-devices.log" || status=1

timeout 120 python3 -m benchmarks.tensor_gpu --rounds 3 --json "$out/tensor_gpu.json" \
  2>&1 | tee "$out/tensor_gpu.log" || status=1

exit "$status"
