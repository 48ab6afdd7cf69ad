#!/usr/bin/env bash
# Quick start, step 1: set up (scripts/setup.sh) and run the MNIST demo (ETB vs IBP tightness and timing).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m etbkernels.demo "$@"
