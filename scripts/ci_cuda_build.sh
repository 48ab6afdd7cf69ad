#!/usr/bin/env bash
# CI compile check of the CUDA build on a GPU-less machine (docs/build.md):
# a venv with torch 2.14.1 (cu130, from the local package files), nvcc 13.0 at /usr/local/cuda,
# then FORCE_CUDA=1 pip install -e . must compile and link every csrc/cuda/*.cu / *.cpp, and the
# result must import and register CUDA kernels (no kernel can run here: no GPU).
#
# Idempotent: the venv (default .venv-cu in the repo root, override with ETBK_CU_VENV) is reused
# when it already has torch 2.14.1; the build goes to build/ci-cuda (incremental with ninja) and
# the import check runs on a scratch copy, so a CPU build in the same tree is not disturbed.
# ~1 min for the venv the first time, ~2-4 min for the build on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${ETBK_CU_VENV:-$ROOT/.venv-cu}
TORCH_VERSION=${ETBK_CU_TORCH:-2.14.1}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
T0=$(date +%s)
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT

if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "ci_cuda_build: nvcc not found at $CUDA_HOME/bin/nvcc" >&2; exit 2
fi
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') and torch.version.cuda else 1)" 2>/dev/null; then
  echo "ci_cuda_build: creating $VENV with torch==$TORCH_VERSION (CUDA build)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" ninja numpy setuptools wheel pybind11 pytest expecttest
fi
PY="$VENV/bin/python"
"$PY" -c "import torch; print('ci_cuda_build: torch', torch.__version__, 'cuda', torch.version.cuda)"
"$CUDA_HOME/bin/nvcc" --version | tail -n 1

# 1. fast syntax/ptxas pass of the torch-free kernels (~15 s): clear errors before the long build
"$CUDA_HOME/bin/nvcc" -c -arch=sm_90 -O3 -std=c++17 -Icsrc -Xptxas -v csrc/cuda/etb_radius_kernels.cu \
  -o "$SCRATCH/kernels.o" 2> "$SCRATCH/ptxas.log" || { cat "$SCRATCH/ptxas.log"; exit 1; }
echo "ci_cuda_build: kernels compile (sm_90); kernels with register spills: $(grep -cE ' [1-9][0-9]* bytes spill stores' "$SCRATCH/ptxas.log" || true)"

# 2. the full extension: compile + link against torch's CUDA libraries
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-2} \
  "$PY" setup.py -q build_ext --build-temp build/ci-cuda/temp --build-lib build/ci-cuda/lib

# 3. the built module imports and registers the CUDA kernels: imported from a scratch copy of the
#    package, so the source tree (and any CPU build's in-place module) is left as it was
LIB=$(ls build/ci-cuda/lib/etbkernels/_C*.so | head -n 1)
cp -r etbkernels "$SCRATCH/etbkernels"  # the whole package, subpackages included
find "$SCRATCH/etbkernels" \( -name '_C*.so' -o -name __pycache__ \) -prune -exec rm -rf {} +
cp "$LIB" "$SCRATCH/etbkernels/"
(cd "$SCRATCH" && "$PY" - <<'PYEOF'
import torch
import etbkernels
assert etbkernels.has_cuda_kernels(), "CUDA kernels are not registered"
for op in ("etb_block", "etb_block_backward", "ibp_block", "ibp_block_backward"):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"etbkernels::{op}", "CUDA"), op
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"etbkernels::{op}", "CPU"), op
import importlib.util
if importlib.util.find_spec("triton") is not None:  # torch's CUDA wheels bring Triton: the TF32/BF16 kernels
    assert etbkernels.has_triton_kernels(), "Triton is installed but tc_radius is not registered for CUDA"
print("ci_cuda_build: import OK from", etbkernels.__file__, "- has_cuda_kernels() = True; has_triton_kernels() =",
      etbkernels.has_triton_kernels(), "; cuda available here:", torch.cuda.is_available())
PYEOF
)

# 4. the Triton tensor-core kernels compile for sm_90 and use wgmma, with pipelined copies
(cd "$SCRATCH" && "$PY" "$ROOT/bench/triton_compile_report.py" --arch 90) 2>&1 | grep -v -i warn
echo "ci_cuda_build: OK in $(( $(date +%s) - T0 ))s"
