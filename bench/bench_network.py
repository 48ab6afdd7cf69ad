"""Speed of whole-network logit bounds on CPU: ETB vs IBP vs CROWN-IBP vs the per-logit autograd algorithm.

For the small and medium CNN of the IBP paper on MNIST-shaped input (batch 256 by default,
float32, random weights, eps 0.1, no gradients) this times, in one run:

- ``ibp``:            etbkernels.bounds(method="ibp")
- ``crown_ibp``:      etbkernels.bounds(method="crown-ibp"): sound, 2K rows formed backward
- ``crown_forward``:  etbkernels.bounds(method="crown-forward"): sound, every layer, forward
- ``etb_mask_ibp``:   etbkernels.bounds(mask="ibp"): IBP masks, K logit rows formed backward
                      (the same bounds as the authors' release algorithm)
- ``per_logit``:      the authors' release algorithm written plainly: IBP masks, a masked forward
                      pass, then one torch.autograd.grad pass per logit (K passes)
- ``etb_mask_etb``:   etbkernels.bounds(mask="etb"): every layer's ETB bound (blockwise masks)
- ``*_fwd_bwd``:      the same plus a backward pass of a loss on the bounds (training cost);
                      ``per_logit_fwd_bwd`` takes its K passes with ``create_graph=True``, as
                      training through the authors' algorithm must

auto_LiRPA 0.3 is an optional comparison (``lirpa_ibp``, ``lirpa_crown_ibp``): timed when it
imports through bench/auto_lirpa_compat.py (scripts/setup.sh installs it), reported as
unavailable otherwise. Timings are medians of --repeats interleaved rounds (one run when a call
takes longer than 20 s). Writes bench/results/bench_network.{json,md} (with --frozen:
bench_network_frozen.{json,md}).

    python -m bench run network                 # small + medium CNN, batch 256 (python -m bench.bench_network)
    python -m bench run network -- --batch 64 --models small
    python -m bench run network -- --frozen     # requires_grad=False: bench_network_frozen
"""
from __future__ import annotations

import sys

import torch

import etbkernels
from etbkernels.network import models

from . import auto_lirpa_compat
from .harness import interleaved_medians, parse_bench_args, write_results
from .harness.network_args import network_parser, network_settings
from .per_logit import per_logit_autograd

EPS = 0.1
SLOW_S = 20  # a call slower than this is timed once


def _fwd_bwd(model, x, per_logit=False, **kw):
    """Bounds, then a backward pass of their summed width (a training step's bound cost)."""
    model.zero_grad()
    b = per_logit_autograd(model, x, EPS, create_graph=True) if per_logit else etbkernels.bounds(model, x, EPS, **kw)
    (b.upper - b.lower).sum().backward()


def lirpa_fns(model, x):
    """auto_LiRPA 0.3's IBP and CROWN-IBP on the same model and batch (its full CROWN, a backward pass
    per hidden neuron, is timed at batch 8 by bench/crown_full.py), and a note on its bounds."""
    try:
        lirpa = auto_lirpa_compat.load()
    except ImportError as e:  # optional dependency
        return {}, f"auto_LiRPA unavailable ({e})"
    fn = auto_lirpa_compat.lirpa_bounder(model, x, EPS)
    with torch.no_grad():
        lo, up = fn("CROWN-IBP")
        ours = etbkernels.bounds(model, x, EPS, method="crown-ibp")
    diff = max((lo - ours.lower).abs().max().item(), (up - ours.upper).abs().max().item())
    diff /= max(up.abs().max().item(), lo.abs().max().item(), 1e-30)
    return ({"lirpa_ibp": lambda: fn("IBP"), "lirpa_crown_ibp": lambda: fn("CROWN-IBP")},
            f"auto_LiRPA {lirpa.__version__} (bench/auto_lirpa_compat.py): its CROWN-IBP bounds differ from ours by "
            f"at most {diff:.1e} of the largest bound (float32)")


def _medians(fns, repeats: int) -> dict:
    t = interleaved_medians(fns, repeats, single_if_slower_than=SLOW_S)
    return {k: v["median_s"] for k, v in t.items()}


def main(argv=None) -> int:
    ap = network_parser(__doc__, "bench.bench_network", repeats=3, choices=("small", "medium", "large"), quick_batch=4)
    ap.add_argument("--skip-etb-mask-etb", action="store_true",
                    help="skip the slow all-layer timings (ETB mask=etb, CROWN forward)")
    ap.add_argument("--skip-backward", action="store_true")
    ap.add_argument("--frozen", action="store_true",
                    help="parameters with requires_grad=False, as when verifying a trained model (no backward timings)")
    args = parse_bench_args(ap, argv)
    args.models, args.batch, args.repeats = network_settings(args)
    torch.manual_seed(0)
    rows, notes = [], []
    for name in args.models:
        model = {"small": models.small_cnn, "medium": models.medium_cnn, "large": models.large_cnn}[name]().eval()
        model.requires_grad_(not args.frozen)
        x = torch.rand(args.batch, 1, 28, 28)
        # same numbers: the fast path and the per-logit algorithm agree
        with torch.no_grad():
            a = etbkernels.bounds(model, x[:8], EPS, mask="ibp")
        b = per_logit_autograd(model, x[:8], EPS)
        err = (a.radius - b.radius).abs().max().item() / b.radius.abs().max().item()
        notes.append(f"{name}: max relative difference ETB(mask=ibp) vs per-logit autograd radius: {err:.2e}")
        if not args.frozen:  # and the same weight gradients, so the training-step timings compare like with like
            grads = []
            for step in (lambda: _fwd_bwd(model, x[:8], mask="ibp"), lambda: _fwd_bwd(model, x[:8], per_logit=True)):
                step()
                grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
            gerr = (grads[0] - grads[1]).abs().max().item() / grads[1].abs().max().item()
            notes.append(f"{name}: max relative difference of their weight gradients (loss: width sum): {gerr:.2e}")
        fns = {
            "ibp": lambda: etbkernels.bounds(model, x, EPS, method="ibp"),
            "crown_ibp": lambda: etbkernels.bounds(model, x, EPS, method="crown-ibp"),
            "etb_mask_ibp": lambda: etbkernels.bounds(model, x, EPS, mask="ibp"),
            "per_logit": lambda: per_logit_autograd(model, x, EPS),
        }
        if not args.skip_etb_mask_etb:
            fns["etb_mask_etb"] = lambda: etbkernels.bounds(model, x, EPS, mask="etb")
            fns["crown_forward"] = lambda: etbkernels.bounds(model, x, EPS, method="crown-forward")
        lf, note = lirpa_fns(model, x)
        fns.update(lf)
        notes.append(f"{name}: {note}")
        with torch.no_grad():  # per_logit enables autograd inside
            res = _medians(fns, args.repeats)
        if not (args.skip_backward or args.frozen):
            res.update(_medians({"ibp_fwd_bwd": lambda: _fwd_bwd(model, x, method="ibp"),
                                 "crown_ibp_fwd_bwd": lambda: _fwd_bwd(model, x, method="crown-ibp"),
                                 "etb_mask_ibp_fwd_bwd": lambda: _fwd_bwd(model, x, mask="ibp"),
                                 "per_logit_fwd_bwd": lambda: _fwd_bwd(model, x, per_logit=True)}, args.repeats))
        row = {"model": name, "batch": args.batch, **{k: round(v, 4) for k, v in res.items()}}
        row["per_logit_over_etb_mask_ibp"] = round(res["per_logit"] / res["etb_mask_ibp"], 2)
        row["etb_mask_ibp_over_ibp"] = round(res["etb_mask_ibp"] / res["ibp"], 2)
        if "per_logit_fwd_bwd" in res:  # the same comparison for a training step
            row["per_logit_over_etb_mask_ibp_fwd_bwd"] = round(res["per_logit_fwd_bwd"] / res["etb_mask_ibp_fwd_bwd"], 2)
        row["crown_ibp_over_ibp"] = round(res["crown_ibp"] / res["ibp"], 2)
        if "lirpa_ibp" in res:  # auto_LiRPA's time over ours, same method (above 1: ours is faster)
            row["lirpa_ibp_over_ibp"] = round(res["lirpa_ibp"] / res["ibp"], 2)
            row["lirpa_crown_ibp_over_crown_ibp"] = round(res["lirpa_crown_ibp"] / res["crown_ibp"], 2)
        if "etb_mask_etb" in res:
            row["etb_mask_etb_over_ibp"] = round(res["etb_mask_etb"] / res["ibp"], 2)
            row["per_logit_over_etb_mask_etb"] = round(res["per_logit"] / res["etb_mask_etb"], 3)
            row["crown_forward_over_etb_mask_etb"] = round(res["crown_forward"] / res["etb_mask_etb"], 2)
        print(row, flush=True)
        rows.append(row)
    meta = {"dtype": "float32", "eps": EPS, "repeats": args.repeats, "frozen": args.frozen}
    keys = [k for k in rows[0] if k not in ("model", "batch")]
    lines = ["# Network logit-bound speed (CPU, generated by bench/bench_network.py)", "",
             f"float32, eps {EPS}, random weights, medians of {args.repeats} interleaved rounds"
             f"{', parameters frozen (requires_grad=False)' if args.frozen else ''}.", ""]
    lines += [f"- {n}" for n in notes]
    lines += ["", "| model | batch | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
    lines += [f"| {r['model']} | {r['batch']} | " + " | ".join(str(r.get(k, "-")) for k in keys) + " |" for r in rows]
    lines += ["", "Times in seconds; ratios are measured in the same run."]
    write_results(args, "bench_network_frozen" if args.frozen else "bench_network",
                  {"meta": meta, "notes": notes, "rows": rows}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
