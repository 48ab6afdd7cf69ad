#!/usr/bin/env bash
# Quick start, step 2: set up if needed and run the test suite (extra args go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q tests "$@"
if [ "$#" -eq 0 ]; then
  # The CUDA test file run against the CPU kernels: checks its harness here and pins CPU and CUDA
  # to the same semantics (it caught a CPU/CUDA difference for samples without active units).
  ETBK_TEST_DEVICE=cpu .venv/bin/python -m pytest -q tests/test_cuda_block.py
fi
