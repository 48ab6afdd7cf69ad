#!/usr/bin/env bash
# One-shot GPU check of etbkernels (kernels, the network code, training), for a fresh GPU machine
# with no package index (Python 3.12 with its own torch 2.11.0+cu130, nvcc 13.0, compute-sanitizer;
# see docs/build.md). Run from the repository root:  bash bench/gpu_check.sh
# With the device `run` tool, carry the prepared folder (MNIST and auto_LiRPA; bench/gpu_carry.sh
# builds it here from .venv):  run(command="bash bench/gpu_check.sh", carry=["bench/gpu_carry"])
#
# Steps, in priority order (each time-limited; all of them together GPU_CHECK_BUDGET_S, default
# 320 s, so the whole script stays under 6 minutes on an H100; what does not fit is SKIPPED):
#   1. build the extension in place (pip -e, no index, MAX_JOBS=16, TORCH_CUDA_ARCH_LIST=9.0);
#      then MNIST, auto_LiRPA (+ appdirs, tqdm) from bench/gpu_carry/site onto PYTHONPATH, only
#      those the machine cannot import itself (no step of its own: carry.log)
#   2. tests_network: the network fuzz and graph tests with ETBK_TEST_DEVICE=cuda
#      (ETBK_FUZZ_SEEDS=${GPU_CHECK_FUZZ_SEEDS:-3} seeds per fuzz test)
#   3. network_gpu: bench.gpu_network: bounds() (IBP, ETB both masks, CROWN-IBP), per-logit autograd,
#      auto_LiRPA (if it imports) and one training step per method, small and medium CNN, batch 256
#   4. bench: bench.bench_cuda (block kernels and their variants); masked_fwd: bench.gpu_masked_fwd
#      (the block forward against the active fraction: the mask-aware mma.sync / FFMA kernels)
#   5. train_ibp, train_etb: one MNIST epoch of the small CNN (python -m etbkernels train;
#      GPU_CHECK_TRAIN_LIMIT=N trains on N images instead of 60000)
#   6. tests: the CUDA block tests (tests/test_cuda_block.py, with the > 2^31-element case) and the
#      Triton tests; tests_rest: the CUDA cases of the rest of the suite (ETBK_TEST_DEVICE=cuda)
#   7. ptxas register / spill report, Triton tile sweep and register report
#   8. compute-sanitizer memcheck, racecheck, synccheck on bench.sanitize_case; Nsight Compute on
#      bench.ncu_case; initcheck
# and prints a short table last. Logs and results go to bench/results/ and, as soon as each step
# ends, to $OUT (the lent machine's result folder): $OUT/summary.txt (rewritten after every step),
# $OUT/logs/STEP.log, $OUT/results/ (result files the step wrote), $OUT/train_*.json; at the end
# $OUT/gpu_check_logs.tgz. GPU_CHECK_SKIP="step ..." skips steps; GPU_CHECK_DRY=1 only logs the
# commands (a control-flow check on any machine: OUT=/tmp/x GPU_CHECK_DRY=1 bash bench/gpu_check.sh).
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RES="$ROOT/bench/results"
DRY=${GPU_CHECK_DRY:-0}
LOGDIR="$RES/gpu_check_$STAMP"
[ "$DRY" = 1 ] && LOGDIR="${TMPDIR:-/tmp}/gpu_check_dry_$STAMP"   # a dry run leaves the checkout as it was
mkdir -p "$LOGDIR"
touch "$LOGDIR/.start"   # result files newer than this were written by this run
PY=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"
SAN=$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")
BUDGET=${GPU_CHECK_BUDGET_S:-320}   # seconds for all steps together (the script: < 6 min)
T0=$(date +%s)
SUMMARY=()

# publish [NAME]: copies what exists so far to $OUT at once (a run cut short still returns it): the
# step's log, result files written since the start, the training logs, and the summary so far.
publish() {
  [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ] || return 0
  mkdir -p "$OUT/logs" "$OUT/results"
  [ -n "${1:-}" ] && [ -f "$LOGDIR/$1.log" ] && cp "$LOGDIR/$1.log" "$OUT/logs/" 2>/dev/null
  cp "$LOGDIR/env.log" "$LOGDIR/carry.log" "$OUT/logs/" 2>/dev/null
  find "$RES" -maxdepth 1 -type f \( -name '*.json' -o -name '*.md' -o -name '*.txt' \) -newer "$LOGDIR/.start" \
    -exec cp {} "$OUT/results/" \; 2>/dev/null
  for d in "$LOGDIR"/train_*/; do
    [ -f "$d/train_log.json" ] && cp "$d/train_log.json" "$OUT/$(basename "$d").json" 2>/dev/null
  done
  { echo "gpu_check so far ($(( $(date +%s) - T0 ))s of ${BUDGET}s):"; printf '%s\n' "${SUMMARY[@]}"; } \
    > "$OUT/summary.txt" 2>/dev/null
  return 0
}

# step NAME LIMIT_S CMD...: runs CMD with a timeout of min(LIMIT_S, time left), logs to $LOGDIR/NAME.log
step() {
  local name=$1 limit=$2; shift 2
  local now left t1 rc
  if [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then  # GPU_CHECK_SKIP="tests_rest initcheck" skips steps
    SUMMARY+=("$(printf '%-14s %-8s %6s  %s' "$name" SKIPPED - "GPU_CHECK_SKIP")"); publish; return 0
  fi
  now=$(date +%s); left=$((BUDGET - (now - T0)))
  if [ "$left" -lt 10 ]; then
    SUMMARY+=("$(printf '%-14s %-8s %6s  %s' "$name" SKIPPED - "out of time budget")"); publish; return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== [$name] (limit ${limit}s): $*"
  t1=$(date +%s)
  if [ "$DRY" = 1 ]; then  # control-flow check of this script: log the command only
    echo "dry run: $*" > "$LOGDIR/$name.log"; rc=0
  else
    timeout --kill-after=5 "$limit" "$@" > "$LOGDIR/$name.log" 2>&1
    rc=$?
  fi
  local dt=$(( $(date +%s) - t1 ))
  local status=OK
  [ $rc -ne 0 ] && status=FAIL
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && status=TIMEOUT
  tail -n 25 "$LOGDIR/$name.log"
  SUMMARY+=("$(printf '%-14s %-8s %5ss  %s' "$name" "$status" "$dt" "$(grep -v '^dry run:' "$LOGDIR/$name.log" | grep -E 'passed|failed|ERROR SUMMARY|sanitize_case:|error|^epoch [0-9]+:|^wrote' | tail -n 1 | cut -c1-90)")")
  publish "$name"
  return $rc
}

{
  echo "host: $(hostname)  $(date -u)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  $PY -c "import torch,sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
  nvcc --version 2>&1 | tail -n 2
} 2>&1 | tee "$LOGDIR/env.log"
publish

# pytest-xdist where installed: a test that crashes its worker is reported and the rest still run.
XDIST=""
$PY -c "import xdist" 2>/dev/null && XDIST="-n 4"

# ---------------------------------------------------------------- 1. build, and the carried packages
# (no index: --no-index --no-deps; torch comes from the machine)
step build 200 env MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 FORCE_CUDA=1 \
  $PY -m pip install --no-index --no-deps --no-build-isolation -v -e . \
  || { echo "pip -e build failed (see $LOGDIR/build.log); trying setup.py build_ext --inplace";
       grep -n "error" "$LOGDIR/build.log" | head -n 20;
       step build_inplace 200 env MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 FORCE_CUDA=1 $PY setup.py build_ext --inplace; }
if [ "$DRY" = 1 ]; then
  echo "dry run: has_cuda_kernels check not run" | tee -a "$LOGDIR/build.log"
else
  $PY -c "import etbkernels; assert etbkernels.has_cuda_kernels(), 'no CUDA kernels registered'; print('has_cuda_kernels: True')" \
    2>&1 | tee -a "$LOGDIR/build.log"
fi

# MNIST and auto_LiRPA 0.3 (+ appdirs, tqdm) come in bench/gpu_carry/site (bench/gpu_carry.sh, carried
# by the run tool). Only what this Python cannot import itself goes on PYTHONPATH, through links in
# $LOGDIR/pylib, so the machine's own packages are never shadowed. Runs in dry runs too (a few seconds).
CARRY="$ROOT/bench/gpu_carry/site"
PYLIB="$LOGDIR/pylib"
{
  mkdir -p "$PYLIB"
  if [ -d "$CARRY" ]; then
    echo "carried folder: $CARRY ($(du -sh "$CARRY" | cut -f1)); $(head -n 1 "$CARRY/../MANIFEST.txt" 2>/dev/null)"
    for entry in "$CARRY"/*; do
      mod=$(basename "$entry" .py)
      if $PY -c "import importlib.util as u, sys; sys.exit(u.find_spec('$mod') is None)" 2>/dev/null; then
        echo "  $mod: the machine's own ($($PY -c "import $mod, os; print(os.path.dirname(getattr($mod, '__file__', '') or '?'))" 2>&1 | tail -n 1))"
      else
        ln -sfn "$entry" "$PYLIB/$(basename "$entry")"
        echo "  $mod: carried"
      fi
    done
  else
    echo "no carried folder $CARRY: run bash bench/gpu_carry.sh on the development machine and carry bench/gpu_carry"
  fi
  export PYTHONPATH="$PYLIB${PYTHONPATH:+:$PYTHONPATH}"
  $PY -c "import etbkernels.datasets as d; print('MNIST:', d.mnist_path())" 2>&1 | tail -n 1
  $PY -c "from bench import auto_lirpa_compat as c; m = c.load(); print('auto_LiRPA', m.__version__, 'imports')" 2>&1 | tail -n 1
} > "$LOGDIR/carry.log" 2>&1   # { } runs in this shell: the export holds for every later step
cat "$LOGDIR/carry.log"
MNIST_OK=0; grep -q "^MNIST: " "$LOGDIR/carry.log" && MNIST_OK=1
SUMMARY+=("$(printf '%-14s %-8s %6s  %s' carry "$([ $MNIST_OK = 1 ] && echo OK || echo NO-MNIST)" - \
  "$(grep -E '^auto_LiRPA|does not import|not installed|Error' "$LOGDIR/carry.log" | tail -n 1 | cut -c1-90)")")
publish carry

# ---------------------------------------------------------------- 2. the network code on CUDA
# every test that takes the `device` fixture (tests/conftest.py) runs with device "cuda"; -k cuda keeps those
step tests_network 90 env ETBK_TEST_DEVICE=cuda ETBK_FUZZ_SEEDS=${GPU_CHECK_FUZZ_SEEDS:-3} \
  $PY -m pytest -q $XDIST --maxfail=25 --durations=5 -p no:cacheprovider -k cuda \
  tests/test_network_fuzz.py tests/test_network_dag.py

# ---------------------------------------------------------------- 3. network bounds and training steps
step network_gpu 100 $PY -m bench.gpu_network --device cuda

# ---------------------------------------------------------------- 4. block kernels
step bench 80 $PY -m bench.bench_cuda --reps 6
step masked_fwd 60 $PY -m bench.gpu_masked_fwd --device cuda

# ---------------------------------------------------------------- 5. one MNIST epoch, small CNN
TRAIN_LIMIT=()
[ -n "${GPU_CHECK_TRAIN_LIMIT:-}" ] && TRAIN_LIMIT=(--limit "$GPU_CHECK_TRAIN_LIMIT")
if [ "$MNIST_OK" = 1 ] || [ "$DRY" = 1 ]; then
  for method in ibp etb; do
    step "train_$method" 60 $PY -m etbkernels train --dataset mnist --model small --method "$method" --epochs 1 \
      --device cuda --out "$LOGDIR/train_$method" "${TRAIN_LIMIT[@]}"
  done
else
  SUMMARY+=("$(printf '%-14s %-8s %6s  %s' train_ibp/etb SKIPPED - "no MNIST (carry bench/gpu_carry: bench/gpu_carry.sh)")")
fi

# ---------------------------------------------------------------- 6. the CUDA tests
step tests 150 env ETBK_TEST_HUGE=1 $PY -m pytest -q $XDIST --maxfail=25 --durations=5 -p no:cacheprovider \
  tests/test_cuda_block.py tests/test_triton_radius.py
# the rest of the suite: the cases parametrized over etbkernels.testing.devices() and the `device`
# fixture's (ETBK_TEST_DEVICE=cuda), without the files the steps above ran
step tests_rest 90 env ETBK_TEST_DEVICE=cuda ETBK_FUZZ_SEEDS=${GPU_CHECK_FUZZ_SEEDS:-3} \
  $PY -m pytest -q $XDIST --maxfail=25 -p no:cacheprovider tests -k "cuda" \
  --ignore=tests/test_cuda_block.py --ignore=tests/test_triton_radius.py \
  --ignore=tests/test_network_fuzz.py --ignore=tests/test_network_dag.py

# ---------------------------------------------------------------- 7. registers, Triton tiles
# registers / spills per kernel (the .cu is torch-free: ~15 s)
[ "${GPU_CHECK_SKIP_PTXAS:-0}" = 1 ] || step ptxas 40 $PY -m bench.ptxas_report --arch sm_90
# tile sweep of the Triton tensor-core kernels (the defaults of triton_radius.default_tile)
step triton_sweep 120 $PY -m bench.triton_sweep
# registers / spills of every Triton kernel variant with this machine's Triton (CI reports its own)
step triton_regs 60 $PY -m bench.triton_compile_report --cols 3072

# ---------------------------------------------------------------- 8. sanitizers, Nsight Compute
# (no caching allocator: every allocation is its own cudaMalloc)
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
step memcheck 75 "$SAN" --tool memcheck --error-exitcode 3 --leak-check no $PY -m bench.sanitize_case
step racecheck 60 "$SAN" --tool racecheck --racecheck-report hazard --error-exitcode 3 $PY -m bench.sanitize_case
step synccheck 45 "$SAN" --tool synccheck --error-exitcode 3 $PY -m bench.sanitize_case
unset PYTORCH_NO_CUDA_MEMORY_CACHING

# (optional) Nsight Compute on one TF32 forward: throughput, occupancy, bank conflicts
NCU=$(command -v ncu || echo "$CUDA_HOME/bin/ncu")
step ncu 45 "$NCU" --kernel-name "regex:radius_fwd_mma|_abs_product_kernel" --launch-skip 1 --launch-count 1 \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section InstructionStats \
  $PY -m bench.ncu_case --shape 256,784,1024,1024 --precision high

# (optional, last: may flag cuBLAS internals) initcheck
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
step initcheck 40 "$SAN" --tool initcheck --error-exitcode 3 $PY -m bench.sanitize_case
unset PYTORCH_NO_CUDA_MEMORY_CACHING

TOTAL=$(( $(date +%s) - T0 ))
newest() {  # newest result file matching $1 written by this run, or nothing
  local f
  f=$(ls -t $1 2>/dev/null | head -n 1)
  [ -n "$f" ] && [ "$f" -nt "$LOGDIR/.start" ] && echo "$f"
}
BENCH_MD=$(newest "$RES/gpu_*.md")
SWEEP_MD=$(newest "$RES/triton_sweep_*.md")
NET_MD=$(newest "$RES/network_gpu_*.md")
MASKED_MD=$(newest "$RES/masked_fwd_gpu_*.md")
{
  echo
  echo "==================== etbkernels gpu_check ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1), ${TOTAL}s) ===================="
  grep -E "regs" "$LOGDIR/ptxas.log" 2>/dev/null | head -n 12
  grep -E "regs|variants OK" "$LOGDIR/triton_regs.log" 2>/dev/null | head -n 12
  echo
  printf '%s\n' "${SUMMARY[@]}"
  echo
  for md in "$NET_MD" "$BENCH_MD" "$MASKED_MD" "$SWEEP_MD"; do [ -n "$md" ] && { cat "$md"; echo; }; done
  [ -n "$BENCH_MD$NET_MD" ] || echo "(no benchmark table this run)"
} | tee "$LOGDIR/summary.txt"

# $OUT: the summary (replacing the running one), the result files and one archive of all logs
# (the training checkpoints left out).
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  publish
  cp "$LOGDIR/summary.txt" "$OUT/summary.txt" 2>/dev/null
  tar -czf "$OUT/gpu_check_logs.tgz" --exclude='checkpoint.pt' --exclude='pylib' \
    -C "$(dirname "$LOGDIR")" "$(basename "$LOGDIR")" 2>/dev/null
fi
