#!/usr/bin/env bash
# Issue 19's table: MNIST, small CNN, every training method at eps 0.1 and 0.3 with the same training budget
# (BUDGET minutes of CPU time per model, one thread each, WORKERS models at a time), each evaluated at its eps
# on the first 2000 test images: the strong PGD (any step of any restart), IBP / CROWN-IBP / CROWN-forward
# verification, ETB-expected and the violation rate with the training mask (ibp), then the violation rate
# with the other mask (etb). Hours of CPU: not part of CI. Resumable: rerun the same command; finished
# trainings and evaluations are skipped, unfinished trainings continue from their checkpoint (--resume).
# Every command goes to $OUT/commands.log, every job's output to $OUT/logs/.
#   OUT=runs/mnist_same_budget BUDGET=8 WORKERS=2 bash scripts/mnist_same_budget.sh
# Smoke run (minutes): OUT=/tmp/smoke BUDGET=0.2 EXTRA_EVAL="--limit 40" PGD="--pgd-steps 3" \
#   VIOL="--violation-limit 4 --violation-steps 2" bash scripts/mnist_same_budget.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/mnist_same_budget}
BUDGET=${BUDGET:-8}           # CPU minutes of training per model
WORKERS=${WORKERS:-2}
PGD=${PGD:-"--pgd-steps 50 --pgd-restarts 5"}
VIOL=${VIOL:-"--violation-limit 200 --violation-steps 20"}
VIOL_OTHER=${VIOL_OTHER:-"--violation-limit 100 --violation-steps 20"}
# schedules in fractions of the budget: 5% at eps 0, a ramp over the next 50%; lr / 10 at 80%
COMMON="--dataset mnist --model small --epochs 1000 --budget-cpu-minutes $BUDGET --batch-size 128 \
--optimizer adam --lr 1e-3 --lr-milestones 80 --seed 0 --threads 1 --no-progress ${EXTRA_TRAIN:-}"
SCHED="--eps-schedule 0.05,0.5"
mkdir -p "$OUT/logs" "$OUT/.claims"
rm -rf "$OUT/.claims"/*  # claims of an earlier (killed) invocation
LOG="$OUT/commands.log"

run() { echo "$(date -u +%FT%TZ) $*" >> "$LOG"; "$@"; }

# name | eps | train options, in the order the workers take them (the most informative first)
JOBS=()
for eps in 0.1 0.3; do
  JOBS+=("pgd_$eps|$eps|--method pgd --pgd-train-steps 7 --eps-schedule 0,0.2")
  JOBS+=("ibp_$eps|$eps|--method ibp --kappa 0.5 $SCHED")
  JOBS+=("etb-attack_$eps|$eps|--method etb-attack --pgd-train-steps 7 --violation-penalty 10 --kappa 0.5 $SCHED")
  JOBS+=("crown-ibp_$eps|$eps|--method crown-ibp --beta-final 0 --kappa 0.5 $SCHED")
  JOBS+=("etb-interp_$eps|$eps|--method etb-interp --beta-final 0.5 --kappa 0.5 $SCHED")
  JOBS+=("etb_$eps|$eps|--method etb --lam 1.0 $SCHED")
  [[ $eps == 0.1 ]] && JOBS+=("nominal|0.1 0.3|--method nominal")
done

job() {  # name, eval eps list, train options
  local name=$1 epss=$2 opts=$3 dir="$OUT/$1" resume=""
  if ! "$PY" -c "import json,sys; sys.exit(not json.load(open('$dir/train_log.json')).get('finished'))" 2>/dev/null; then
    [[ -f "$dir/checkpoint.pt" ]] && resume="--resume"
    # shellcheck disable=SC2086
    run "$PY" -m etbkernels train $COMMON $opts --eps "${epss%% *}" --out "$dir" $resume
  fi
  for e in $epss; do
    [[ -f "$dir/eval_eps$e.json" ]] ||
      run "$PY" -m etbkernels eval "$dir" --eps "$e" --limit 2000 $PGD $VIOL --threads 1 --no-progress ${EXTRA_EVAL:-}
    [[ -f "$dir/mask_etb/eval_eps$e.json" ]] ||
      run "$PY" -m etbkernels eval "$dir" --eps "$e" --limit 2000 --no-pgd --etb-mask etb $VIOL_OTHER --threads 1 \
        --no-progress --out "$dir/mask_etb" ${EXTRA_EVAL:-}
  done
}

worker() {
  local spec name
  for spec in "${JOBS[@]}"; do
    name=${spec%%|*}
    mkdir "$OUT/.claims/$name" 2>/dev/null || continue  # another worker has it
    IFS='|' read -r name epss opts <<< "$spec"
    job "$name" "$epss" "$opts" > "$OUT/logs/$name.log" 2>&1 || echo "job $name failed: see $OUT/logs/$name.log"
  done
}

for ((w = 0; w < WORKERS; w++)); do worker & done
wait
run "$PY" scripts/same_budget_table.py "$OUT"
