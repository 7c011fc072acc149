#!/usr/bin/env bash
# The GPU check in one command (under 8 minutes on one GPU): MSACL pre-training images/s at 64 and 256 px in fp32
# and bf16, peak GPU memory, PaDiM and PatchCore fit + test seconds on kvasir_seg_patch128 at 256 px, and the same
# on the CPU for scale. Needs the shared data beside the repository (or MSACL_DATA_ROOT) and `make install`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
exec "$PY" benchmarks/gpu_check.py "$@"
