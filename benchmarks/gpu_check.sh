#!/usr/bin/env bash
# GPU check, for machines with a CUDA GPU (about 2-4 minutes on one H100; 5 at most):
#   1. device name and capability (fails early without CUDA),
#   2. the MoE unit tests: tests/test_moe_compile.py (CUDA paths against CPU, no host
#      sync on the grouped_mm path, compile) and tests/test_moe_layer.py run with CUDA
#      as the default device (the per-frame reference checks on the GPU),
#   3. benchmarks/moe_ffn.py on a reduced grid and benchmarks/encoder_step.py (bf16 autocast).
# Results go to benchmarks/results/gpu_<YYYY-MM>/*_cuda.json (override with OUT_DIR=...); point
# make_reports.GPU_DIR at that folder to put them in the GPU report.
#
#   bash benchmarks/gpu_check.sh            # PYTHON=... to pick the interpreter
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
# our tests need no pytest plugins; a GPU image's own (e.g. jaxtyping's) can fail to load
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
OUT_DIR=${OUT_DIR:-benchmarks/results/gpu_$(date +%Y-%m)}
mkdir -p "$OUT_DIR"
start=$SECONDS
step() { echo; echo "== [$((SECONDS - start)) s] $*"; }

step "device"
"$PYTHON" - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device visible to torch " + torch.__version__)
p = torch.cuda.get_device_properties(0)
print(f"{torch.cuda.get_device_name(0)} | sm{p.major}{p.minor} | {p.total_memory / 2**30:.0f} GiB"
      f" | torch {torch.__version__} | CUDA {torch.version.cuda}")
EOF
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader || true

step "unit tests: tests/test_moe_compile.py (CUDA cases included)"
timeout 150 "$PYTHON" -m pytest -q -rs tests/test_moe_compile.py

step "unit tests: tests/test_moe_layer.py with CUDA as the default device"
timeout 90 "$PYTHON" - <<'EOF'
import sys
import pytest
import torch
torch.set_default_device("cuda")
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "tests/test_moe_layer.py"]))
EOF

step "benchmark: moe_ffn (reduced grid, bf16 autocast)"
timeout 150 "$PYTHON" benchmarks/moe_ffn.py --device cuda \
    --experts 8,16 --frames 8192,32768 --dims 256x1024,512x2048 \
    --warmup 3 --repeats 10 --gshard-max-gib 8 \
    --out "$OUT_DIR/moe_ffn_cuda.json"

step "benchmark: encoder_step (bf16 autocast)"
timeout 90 "$PYTHON" benchmarks/encoder_step.py --device cuda --warmup 3 --repeats 10 \
    --out "$OUT_DIR/encoder_step_cuda.json"

step "done in $((SECONDS - start)) s"
