"""Time one training step (loss, backward, Adam step) of every training method on one batch.

    .venv/bin/python scripts/time_training_methods.py [--batch-size 128] [--repeats 3] [--threads 2]

The small CNN of ``--model small`` on MNIST-shaped inputs (random pixels in [0, 1] and random
labels: the cost of these steps does not depend on the values), eps 0.1, kappa 0.5, beta 0.5 (mid
ramp, so crown-ibp and etb-interp compute both of their bounds), ETB with ``--mask ibp``, the
attacks with 10 steps (the ``--pgd-train-steps`` default). One untimed step first, then the median of
``--repeats`` timed steps, each on the same batch. Prints a markdown table; a single run on
whatever machine it runs on, so compare the rows, not the absolute times across machines.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from etbkernels.training.data import build_model  # noqa: E402
from etbkernels.training.loop import METHODS, TrainConfig, build_objective  # noqa: E402

ORDER = ("nominal", "pgd", "ibp", "crown-ibp", "etb", "etb-interp", "etb-attack")


def time_step(method: str, *, batch_size: int = 128, repeats: int = 3, model: str = "small", eps: float = 0.1,
              pgd_steps: int = 10, seed: int = 0) -> float:
    """Median wall time (seconds) of one training step of ``method`` (after one untimed step)."""
    torch.manual_seed(seed)
    cfg = TrainConfig(out="unused", dataset="mnist", model=model, method=method, eps=eps, mask="ibp",
                      pgd_steps=pgd_steps)
    net = build_model(model, "mnist", mlp_widths=[64])
    objective = build_objective(cfg, net)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (batch_size,), generator=g)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        loss, _ = objective(x, y, eps, 0.5, 0.5, seed + i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    """Times every method (or ``--methods``) and prints a markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128, help="images per step")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per method (median)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--model", choices=("small", "mlp"), default="small", help="network (mlp: widths 64, for tests)")
    p.add_argument("--methods", default=",".join(ORDER), help="comma-separated methods")
    a = p.parse_args(argv)
    methods = [m for m in a.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad or a.batch_size < 1 or a.repeats < 1 or a.threads < 1:
        p.error(f"need methods from {METHODS} (got {bad}), --batch-size, --repeats, --threads >= 1")
    torch.set_num_threads(a.threads)
    rows = [(m, time_step(m, batch_size=a.batch_size, repeats=a.repeats, model=a.model)) for m in methods]
    base = dict(rows).get("nominal")
    print(f"| method | s / step (batch {a.batch_size}, {a.model}, {a.threads} threads) | x nominal |")
    print("|---|---|---|")
    for m, t in rows:
        print(f"| {m} | {t:.3f} | {'-' if base is None else format(t / base, '.1f')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
