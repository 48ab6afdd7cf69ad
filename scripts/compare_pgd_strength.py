"""Is the table's PGD at least as strong as the attack of the earlier results? For each run folder: the
samples left unbroken by the earlier evaluation attack (20 steps, 2 restarts, judged at each restart's last
point) and by the table's (50 steps, 5 restarts, any step counts), same seed and step rule, first N test
images at the run's training eps; and whether every sample the earlier attack broke is broken by the new one.
    python scripts/compare_pgd_strength.py runs/mnist_same_budget/*/ --limit 2000 --threads 2"""
import argparse
import json
from pathlib import Path

import torch

from etbkernels.attacks import pgd_attack
from etbkernels.training.checkpoint import load_run_checkpoint
from etbkernels.training.data import load_dataset
from etbkernels.training.evaluate import _rebuild

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("runs", nargs="+", type=Path)
p.add_argument("--limit", type=int, default=2000)
p.add_argument("--threads", type=int)
p.add_argument("--out", type=Path, help="JSON file for the counts")
a = p.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)
OLD = dict(steps=20, restarts=2, any_step=False)
NEW = dict(steps=50, restarts=5, any_step=True)
rows = []
print("| run | eps | images | unbroken, earlier attack (20x2, last point) | unbroken, table's attack (50x5, any step) "
      "| earlier-broken samples the new attack misses |")
print("|---|---|---|---|---|---|")
for run in a.runs:
    state = load_run_checkpoint(run / "checkpoint.pt")
    cfg = state["config"]
    eps = cfg["eps"] if cfg["method"] != "nominal" else 0.1
    model = _rebuild(state, "cpu")
    x, y = load_dataset(cfg["dataset"], "test", cfg.get("data_dir"), a.limit)
    _, old = pgd_attack(model, x, y, eps, seed=0, **OLD)
    _, new = pgd_attack(model, x, y, eps, seed=0, **NEW)
    missed = int((new & ~old).sum())
    rows.append({"run": run.name, "eps": eps, "n": len(y), "old_unbroken": int(old.sum()), "new_unbroken": int(new.sum()),
                 "missed": missed, "old": OLD, "new": NEW})
    print(f"| {run.name} | {eps:g} | {len(y)} | {int(old.sum())} | {int(new.sum())} | {missed} |", flush=True)
if a.out:
    a.out.write_text(json.dumps(rows, indent=1))
