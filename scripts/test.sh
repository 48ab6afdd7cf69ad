#!/usr/bin/env bash
# Quick start, step 2: set up if needed and run the test suite (extra args go to pytest).
# Both stages always run; the script fails if either fails.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
status=0
.venv/bin/python -m pytest -q tests "$@" || status=1
if [ "$#" -eq 0 ]; then
  # The CUDA test file run against the CPU kernels: checks its harness here and pins CPU and CUDA
  # to the same semantics (it caught a CPU/CUDA difference for samples without active units). Its
  # "+emul" paths make this CPU round float32 matmuls as a CPU with AMX does under "high"/"medium".
  ETBK_TEST_DEVICE=cpu .venv/bin/python -m pytest -q tests/test_cuda_block.py || status=1
fi
[ "$status" -eq 0 ] && echo "test.sh: both stages passed" || echo "test.sh: FAILED (see above)" >&2
exit "$status"
