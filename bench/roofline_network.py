"""Flops against time for network logit bounds (CPU): how far each method is from the hardware,
and whether the speed targets of the network-bounds issue can be met by any implementation of
the same algorithm.

For the small and medium CNN (random weights, batch 256, float32, eps 0.1, no gradients) this
counts the matmul/convolution flops each method really executes (torch's flop formulas, applied
to every aten call, backward passes included), times each method, and measures this machine's
float32 matmul rate (a 2048^3 ``torch.mm``) in the same run. Then:

- ``floor``: flops / matmul rate, the time of a perfect implementation of the same algorithm;
- ``efficiency``: achieved flop rate / matmul rate;
- per target, the best ratio any implementation could reach:
  per-logit / ETB(mask="ibp") at best = measured per-logit time / ETB(mask="ibp")'s floor (the
  target asks for >= 5); ETB(mask="etb") / IBP at best = ETB(mask="etb")'s floor / measured IBP
  time (the target asks for <= 10). Both use the measured time of the other side, so a faster
  IBP only makes the second one harder.

Elementwise work (masks, |.|, sums) is not in the flop count, so the floors are optimistic.
Writes bench/results/roofline_network.{json,md}.

    python bench/roofline_network.py
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

import etbkernels
from etbkernels.network import models

HERE = os.path.dirname(os.path.abspath(__file__))
EPS = 0.1
METHODS = ("ibp", "etb_mask_ibp", "per_logit", "etb_mask_etb")


class _FlopCount(TorchDispatchMode):
    """Adds up torch's flop formulas (mm, bmm, addmm, convolution and their backward) over every
    aten call. (torch's FlopCounterMode also tracks modules, which breaks torch.autograd.grad
    with respect to an input, as the per-logit algorithm does.)"""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(fn) -> int:
    """Matmul/convolution flops of one call of ``fn``."""
    with _FlopCount() as counter:
        fn()
    return counter.flops


def matmul_rate(size: int = 2048, repeats: int = 5) -> float:
    """float32 flop/s of a size^3 torch.mm (median of ``repeats``), this machine's attainable rate."""
    from _timing import median_seconds

    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size ** 3 / median_seconds(lambda: a @ b, repeats)


def method_calls(net, x):
    sys.path.insert(0, HERE)
    from bench_network import per_logit_autograd  # the baseline the docs compare with

    return {"ibp": lambda: etbkernels.bounds(net, x, EPS, method="ibp"),
            "etb_mask_ibp": lambda: etbkernels.bounds(net, x, EPS, mask="ibp"),
            "per_logit": lambda: per_logit_autograd(net, x, EPS),
            "etb_mask_etb": lambda: etbkernels.bounds(net, x, EPS, mask="etb")}


def analyse(name: str, batch: int, repeats: int, rate_repeats: int = 5) -> dict:
    """Flops, times (interleaved medians), the matmul rate and the best reachable ratios for one model."""
    from _timing import interleaved_medians

    torch.manual_seed(0)
    net = getattr(models, f"{name}_cnn")().eval()
    x = torch.rand(batch, 1, 28, 28)
    calls = method_calls(net, x)
    with torch.no_grad():
        flops = {k: count_flops(fn) for k, fn in calls.items()}
        rates = [matmul_rate(repeats=rate_repeats)]
        times = {k: v["median_s"] for k, v in interleaved_medians(calls, repeats).items()}
        rates.append(matmul_rate(repeats=rate_repeats))  # before and after: the machine's noise shows
    rate = max(rates)
    row = {"model": name, "batch": batch, "matmul_gflops": [round(r / 1e9, 1) for r in rates], "methods": {}}
    for k in METHODS:
        row["methods"][k] = {"gflop": flops[k] / 1e9, "time_s": times[k], "gflops": flops[k] / times[k] / 1e9,
                             "efficiency": flops[k] / times[k] / rate, "floor_s": flops[k] / rate}
    m = row["methods"]
    row["per_logit_over_etb_mask_ibp"] = {
        "flop_ratio": flops["per_logit"] / flops["etb_mask_ibp"],
        "measured": times["per_logit"] / times["etb_mask_ibp"],
        "at_best": times["per_logit"] / m["etb_mask_ibp"]["floor_s"], "target": ">= 5"}
    row["etb_mask_etb_over_ibp"] = {
        "flop_ratio": flops["etb_mask_etb"] / flops["ibp"],
        "measured": times["etb_mask_etb"] / times["ibp"],
        "at_best": m["etb_mask_etb"]["floor_s"] / times["ibp"], "target": "<= 10"}
    return row


def markdown(rows, repeats: int) -> str:
    lines = ["# Network logit bounds: flops against time (CPU, generated by bench/roofline_network.py)", "",
             f"threads {torch.get_num_threads()}, torch {torch.__version__}, float32, eps {EPS}, random weights, "
             f"medians of {repeats} interleaved runs. Matmul rate: 2048^3 torch.mm, before and after the "
             "timings; the larger one is used.", ""]
    for r in rows:
        lines += [f"## {r['model']} CNN, batch {r['batch']}, matmul rate {r['matmul_gflops']} GFLOP/s", "",
                  "| method | GFLOP | time (s) | GFLOP/s | efficiency | floor (s) |", "|---|---|---|---|---|---|"]
        for k in METHODS:
            m = r["methods"][k]
            lines.append(f"| {k} | {m['gflop']:.2f} | {m['time_s']:.3f} | {m['gflops']:.1f} | "
                         f"{100 * m['efficiency']:.0f}% | {m['floor_s']:.3f} |")
        lines += ["", "| target | flop ratio | measured | at best (floor) | target |", "|---|---|---|---|---|"]
        for key, label in (("per_logit_over_etb_mask_ibp", "per-logit / ETB(mask=ibp)"),
                           ("etb_mask_etb_over_ibp", "ETB(mask=etb) / IBP")):
            t = r[key]
            lines.append(f"| {label} | {t['flop_ratio']:.2f} | {t['measured']:.2f} | {t['at_best']:.2f} | "
                         f"{t['target']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["small", "medium"], choices=["small", "medium"])
    ap.add_argument("--out", default=os.path.join(HERE, "results", "roofline_network"))
    args = ap.parse_args(argv)
    sys.path.insert(0, HERE)
    rows = []
    for name in args.models:
        rows.append(analyse(name, args.batch, args.repeats, rate_repeats=5 if args.batch > 8 else 1))
        print(json.dumps(rows[-1]), flush=True)
    from _timing import write_results

    write_results(args.out, {"threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows},
                  markdown(rows, args.repeats).splitlines())
    return 0


if __name__ == "__main__":
    sys.exit(main())
