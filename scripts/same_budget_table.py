"""Writes FOLDER/results.md (the same-budget table) and FOLDER/tradeoff.png from the runs of
scripts/mnist_same_budget.sh; works on a partial set of runs (missing figures show as '…').
    python scripts/same_budget_table.py runs/mnist_same_budget"""
import argparse
from pathlib import Path

from etbkernels.training.report import collect_runs, markdown_table, plot_budget_tradeoff

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("folder", type=Path)
a = p.parse_args()
rows = collect_runs(a.folder)
if not rows:
    raise SystemExit(f"{a.folder}: no run folders with a train_log.json")
table = markdown_table(rows)
(a.folder / "results.md").write_text(table + "\n")
print(table)
try:
    print("plot:", plot_budget_tradeoff(rows, a.folder / "tradeoff.png", title="MNIST, small CNN, same training budget"))
except ValueError as err:
    print(f"no plot yet: {err}")
