#!/usr/bin/env bash
# Issue 5 "Results": MNIST, small CNN, nominal / IBP / ETB trained at eps 0.1 and 0.3 (pixels), each
# evaluated at its eps. Hours of CPU: not part of CI. Every command is appended to $OUT/commands.log;
# rerunning the script resumes unfinished runs (--resume) and skips finished evaluations.
#   EPOCHS=10 THREADS=2 bash scripts/train_mnist_results.sh
# Equal time instead of equal epochs: a second folder with more epochs for the faster method, e.g.
#   OUT=runs/ibp_long EPOCHS=40 SCHEDULE=3,20 METHODS=ibp bash scripts/train_mnist_results.sh
# Smoke run (minutes): OUT=/tmp/smoke EPOCHS=1 EXTRA_TRAIN="--limit 256" EXTRA_EVAL="--limit 50" \
#   PGD="--pgd-steps 5 --violation-limit 10 --violation-steps 5" bash scripts/train_mnist_results.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/mnist_small}
EPOCHS=${EPOCHS:-10}          # the same budget for every method
SCHEDULE=${SCHEDULE:-1,4}     # epochs at eps 0, then epochs of linear ramp to eps
THREADS=${THREADS:-2}
METHODS=${METHODS:-"nominal ibp etb"}  # a subset gives a method its own epoch count (same time budget)
PGD=${PGD:-"--pgd-steps 40 --pgd-restarts 5 --violation-limit 500 --violation-steps 20"}
MILESTONE=$((EPOCHS * 3 / 4))
COMMON="--dataset mnist --model small --epochs $EPOCHS --batch-size 128 --optimizer adam --lr 1e-3 \
--seed 0 --threads $THREADS --no-progress ${EXTRA_TRAIN:-}"
(( MILESTONE >= 1 )) && COMMON="$COMMON --lr-milestones $MILESTONE"
mkdir -p "$OUT"
LOG="$OUT/commands.log"

run() { echo "$(date -u +%FT%TZ) $*" >> "$LOG"; "$@"; }

train() {  # name, extra options
  local dir="$OUT/$1"; shift
  local resume=""
  [[ -f "$dir/checkpoint.pt" ]] && resume="--resume"
  # shellcheck disable=SC2086
  run "$PY" -m etbkernels train $COMMON "$@" --out "$dir" $resume
}

evaluate() {  # name, eps
  [[ -f "$OUT/$1/eval_eps$2.json" ]] && return 0
  # shellcheck disable=SC2086
  run "$PY" -m etbkernels eval "$OUT/$1" --eps "$2" $PGD --threads "$THREADS" --no-progress ${EXTRA_EVAL:-}
}

has() { [[ " $METHODS " == *" $1 "* ]]; }
has nominal && train nominal --method nominal
for eps in 0.1 0.3; do
  has ibp && train "ibp_$eps" --method ibp --eps "$eps" --eps-schedule "$SCHEDULE" --kappa 0.5
  has etb && train "etb_$eps" --method etb --eps "$eps" --eps-schedule "$SCHEDULE" --lam 1.0
done
for eps in 0.1 0.3; do
  has nominal && evaluate nominal "$eps"
  for m in ibp etb; do
    has "$m" && evaluate "${m}_$eps" "$eps"
  done
done
run "$PY" -m etbkernels plot "$OUT" --out "$OUT/tradeoff.png" --title "MNIST, small CNN"
"$PY" - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
from etbkernels.training import markdown_table
out = Path(sys.argv[1])
# evaluations of the runs themselves (a folder with a training log), not extra ones written with --out
results = [json.loads(p.read_text()) for p in sorted(out.rglob("eval_eps*.json"))
           if (p.parent / "train_log.json").exists()]
times = {}
for p in out.glob("*/train_log.json"):
    h = json.loads(p.read_text())["history"]
    times[p.parent.name] = sum(e["time_s"] for e in h) / len(h)
lines = [markdown_table(results), "", "| run | epochs | training time per epoch (s) |", "|---|---|---|"]
for name, t in sorted(times.items()):
    n = len(json.loads((out / name / "train_log.json").read_text())["history"])
    lines.append(f"| {name} | {n} | {t:.0f} |")
(out / "results.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
