#!/usr/bin/env bash
# One-shot GPU check of etbkernels' CUDA kernels, for a fresh GPU machine with no package index
# (Python 3.12 with its own torch 2.11.0+cu130, nvcc 13.0, compute-sanitizer; see
# docs/build.md). Run from the repository root:  bash bench/gpu_check.sh
#
# Steps (each time-limited; the whole script stays under ~8 minutes):
#   1. build the extension in place (pip -e, no index, MAX_JOBS=16, TORCH_CUDA_ARCH_LIST=9.0)
#   2. ptxas register / spill report of the kernels (nvcc -Xptxas -v on the torch-free .cu)
#   3. the CUDA tests (tests/test_cuda_block.py, including the > 2^31-element case, then the CUDA
#      cases of the rest of the suite)
#   4. python -m bench.bench_cuda at (256,784,1024,1024) and (256,3072,1024,1024) (with the kernel variants
#      that are not the default yet; writes bench/results/gpu_<device>.{json,md}), then the tile sweep of
#      the Triton kernels (bench.triton_sweep: triton_sweep_<device>.{json,md}) and their register / spill
#      report with this machine's Triton (bench.triton_compile_report)
#   5. compute-sanitizer memcheck, racecheck, synccheck and initcheck on bench.sanitize_case
# and prints a short table last. Logs and results go to bench/results/ (and to $OUT if set).
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RES="$ROOT/bench/results"
LOGDIR="$RES/gpu_check_$STAMP"
mkdir -p "$LOGDIR"
PY=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"
SAN=$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")
BUDGET=${GPU_CHECK_BUDGET_S:-470}   # seconds for all steps together
T0=$(date +%s)
SUMMARY=()

# step NAME LIMIT_S CMD...: runs CMD with a timeout of min(LIMIT_S, time left), logs to $LOGDIR/NAME.log
step() {
  local name=$1 limit=$2; shift 2
  local now left t1 rc
  if [[ " ${GPU_CHECK_SKIP:-} " == *" $name "* ]]; then  # GPU_CHECK_SKIP="tests_rest initcheck" skips steps
    SUMMARY+=("$(printf '%-12s %-8s %6s  %s' "$name" SKIPPED - "GPU_CHECK_SKIP")"); return 0
  fi
  now=$(date +%s); left=$((BUDGET - (now - T0)))
  if [ "$left" -lt 10 ]; then
    SUMMARY+=("$(printf '%-12s %-8s %6s  %s' "$name" SKIPPED - "out of time budget")"); return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "=== [$name] (limit ${limit}s): $*"
  t1=$(date +%s)
  if [ "${GPU_CHECK_DRY:-0}" = 1 ]; then  # control-flow check of this script: log the command only
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
  SUMMARY+=("$(printf '%-12s %-8s %5ss  %s' "$name" "$status" "$dt" "$(grep -E 'passed|failed|ERROR SUMMARY|sanitize_case:|error' "$LOGDIR/$name.log" | tail -n 1 | cut -c1-90)")")
  return $rc
}

{
  echo "host: $(hostname)  $(date -u)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  $PY -c "import torch,sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nvcc --version | tail -n 2
} 2>&1 | tee "$LOGDIR/env.log"

# 1. build (no index: --no-index --no-deps; torch comes from the machine)
step build 200 env MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 FORCE_CUDA=1 \
  $PY -m pip install --no-index --no-deps --no-build-isolation -v -e . \
  || { echo "pip -e build failed (see $LOGDIR/build.log); trying setup.py build_ext --inplace";
       grep -n "error" "$LOGDIR/build.log" | head -n 20;
       step build_inplace 200 env MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 FORCE_CUDA=1 $PY setup.py build_ext --inplace; }
$PY -c "import etbkernels; assert etbkernels.has_cuda_kernels(), 'no CUDA kernels registered'; print('has_cuda_kernels: True')" \
  | tee -a "$LOGDIR/build.log"

# 2. registers / spills per kernel (the .cu is torch-free: ~15 s)
[ "${GPU_CHECK_SKIP_PTXAS:-0}" = 1 ] || step ptxas 40 $PY -m bench.ptxas_report --arch sm_90

# 3. CUDA tests (the 2^31-element test too)
# pytest-xdist where installed: a test that crashes its worker is reported and the rest still run.
XDIST=""
$PY -c "import xdist" 2>/dev/null && XDIST="-n 3"
step tests 150 env ETBK_TEST_HUGE=1 $PY -m pytest -q $XDIST --maxfail=25 --durations=5 -p no:cacheprovider \
  tests/test_cuda_block.py tests/test_triton_radius.py
# 4. benchmarks (before the slower, optional steps so the table is never skipped for time)
step bench 100 $PY -m bench.bench_cuda --reps 6
# 4b. tile sweep of the Triton tensor-core kernels (the defaults of triton_radius.default_tile)
step triton_sweep 120 $PY -m bench.triton_sweep
# 4c. registers / spills of every Triton kernel variant with this machine's Triton (CI reports its own)
step triton_regs 60 $PY -m bench.triton_compile_report --cols 3072


# 5. sanitizers on a small case (no caching allocator: every allocation is its own cudaMalloc)
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
step memcheck 75 "$SAN" --tool memcheck --error-exitcode 3 --leak-check no $PY -m bench.sanitize_case
step racecheck 60 "$SAN" --tool racecheck --racecheck-report hazard --error-exitcode 3 $PY -m bench.sanitize_case
unset PYTORCH_NO_CUDA_MEMORY_CACHING
# the rest of the suite parametrizes over etbkernels.testing.devices(): its CUDA cases
step tests_rest 90 $PY -m pytest -q --maxfail=25 -p no:cacheprovider tests -k "cuda and not test_cuda_block"
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
step synccheck 45 "$SAN" --tool synccheck --error-exitcode 3 $PY -m bench.sanitize_case
unset PYTORCH_NO_CUDA_MEMORY_CACHING

# 6. (optional, last) Nsight Compute on one TF32 forward: throughput, occupancy, bank conflicts
NCU=$(command -v ncu || echo "$CUDA_HOME/bin/ncu")
step ncu 45 "$NCU" --kernel-name "regex:radius_fwd_mma|_abs_product_kernel" --launch-skip 1 --launch-count 1 \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section InstructionStats \
  $PY -m bench.ncu_case --shape 256,784,1024,1024 --precision high

# 7. (optional, last: may flag cuBLAS internals) initcheck
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
step initcheck 40 "$SAN" --tool initcheck --error-exitcode 3 $PY -m bench.sanitize_case
unset PYTORCH_NO_CUDA_MEMORY_CACHING

TOTAL=$(( $(date +%s) - T0 ))
BENCH_MD=$(ls -t "$RES"/gpu_*.md 2>/dev/null | head -n 1)
SWEEP_MD=$(ls -t "$RES"/triton_sweep_*.md 2>/dev/null | head -n 1)
{
  echo
  echo "==================== etbkernels gpu_check ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1), ${TOTAL}s) ===================="
  grep -E "regs" "$LOGDIR/ptxas.log" 2>/dev/null | head -n 12
  grep -E "regs|variants OK" "$LOGDIR/triton_regs.log" 2>/dev/null | head -n 12
  echo
  printf '%s\n' "${SUMMARY[@]}"
  echo
  if [ -n "$BENCH_MD" ] && [ "$BENCH_MD" -nt "$LOGDIR/env.log" ]; then cat "$BENCH_MD"; else echo "(no benchmark table this run)"; fi
  if [ -n "$SWEEP_MD" ] && [ "$SWEEP_MD" -nt "$LOGDIR/env.log" ]; then echo; cat "$SWEEP_MD"; fi
} | tee "$LOGDIR/summary.txt"

# $OUT (the lent machine's result folder) takes few files: the summary, the bench table and one
# archive of all logs.
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  cp "$LOGDIR/summary.txt" "$OUT/" 2>/dev/null
  tar -czf "$OUT/gpu_check_logs.tgz" -C "$RES" "$(basename "$LOGDIR")" 2>/dev/null
  [ -n "$BENCH_MD" ] && cp "$BENCH_MD" "${BENCH_MD%.md}.json" "$OUT/" 2>/dev/null
  [ -n "$SWEEP_MD" ] && cp "$SWEEP_MD" "${SWEEP_MD%.md}.json" "$OUT/" 2>/dev/null
fi
