"""Are auto_LiRPA 0.3's unsound intervals its own, or an effect of running it on today's torch?

tests/test_auto_lirpa_agreement.py finds PGD points outside auto_LiRPA 0.3's CROWN-IBP / CROWN
intervals on an AvgPool2d whose stride differs from its kernel and on a dilated convolution (never
outside ours). This script runs the same cases under an older torch, where auto_LiRPA's import
needs no shim, and compares:

    # 1. in a venv with the oldest torch this machine's index has for Python 3.11 (1.13.1):
    python -m venv /tmp/alp113 && /tmp/alp113/bin/pip install torch==1.13.1 "numpy<2" appdirs tqdm
    /tmp/alp113/bin/pip install --no-deps auto_LiRPA==0.3
    /tmp/alp113/bin/python -m bench.auto_lirpa_old_torch --dump /tmp/alp_old.pt
    # 2. here (.venv: torch 2.13, etbkernels):
    .venv/bin/python -m bench run auto_lirpa_old_torch -- --compare /tmp/alp_old.pt

It prints, per case and seed, how far auto_LiRPA's bounds under the old torch are from its bounds
here and from ours, and how many outputs PGD drives outside each, and writes them to
bench/results/auto_lirpa_old_torch.{json,md}. The model builders live here (torch only) so the
test and the old-torch run build the same networks; the dump side imports nothing newer than
torch 1.13 (the harness is imported by --compare only).
"""
from __future__ import annotations

import argparse
import sys

import torch
from torch import nn

from . import auto_lirpa_compat

EPS = 0.03
SEEDS = (11, 12)


def dilated_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=2, dilation=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * 14 * 14, 3)).double().eval()


def avgpool_stride1_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2, stride=1),
                         nn.Conv2d(4, 4, 2, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).double().eval()


# (name, builder, auto_LiRPA method, ours): where auto_LiRPA 0.3's interval is escaped
CASES = [("avgpool_stride1", avgpool_stride1_net, "CROWN-IBP", "crown-ibp"),
         ("avgpool_stride1", avgpool_stride1_net, "CROWN", "crown"),
         ("dilated", dilated_net, "CROWN", "crown")]


def case_inputs(make, seed):
    torch.manual_seed(seed)
    model = make()
    return model, torch.rand(2, 1, 14, 14, dtype=torch.float64)


def dump(path: str) -> None:
    """Runs auto_LiRPA on every case and seed, saves its bounds with the models and inputs."""
    out = []
    for name, make, theirs, _ in CASES:
        for seed in SEEDS:
            model, x = case_inputs(make, seed)
            lo, up = auto_lirpa_compat.lirpa_bounds(model, x, EPS, theirs, clip=(0.0, 1.0))
            out.append({"name": name, "method": theirs, "seed": seed, "state": model.state_dict(), "x": x,
                        "lo": lo.detach(), "up": up.detach(), "torch": str(torch.__version__)})
            print(name, theirs, seed, "done", flush=True)
    torch.save(out, path)


def compare(path: str) -> list:
    """The saved bounds against auto_LiRPA here, ours and PGD: one line per case and seed."""
    from etbkernels.attacks import pgd_output_range
    from etbkernels.network import bounds
    builders = {name: make for name, make, _, _ in CASES}
    ours_of = {theirs: ours for _, _, theirs, ours in CASES}
    lines = []
    for r in torch.load(path):
        model = builders[r["name"]]()
        model.load_state_dict(r["state"])
        x = r["x"]
        lo_now, up_now = auto_lirpa_compat.lirpa_bounds(model, x, EPS, r["method"], clip=(0.0, 1.0))
        b = bounds(model, x, EPS, method=ours_of[r["method"]], clip=(0.0, 1.0))
        fmin, fmax = pgd_output_range(model, (x - EPS).clamp(0, 1), (x + EPS).clamp(0, 1), steps=100, restarts=2,
                                      seed=r["seed"])
        escaped = lambda lo, up: int(((fmin < lo - 1e-12) | (fmax > up + 1e-12)).sum())  # noqa: E731
        gap = lambda lo, up: max((r["lo"] - lo).abs().max().item(), (r["up"] - up).abs().max().item())  # noqa: E731
        lines.append(f"- {r['name']} {r['method']} seed {r['seed']}: auto_LiRPA on torch {r['torch']} vs on torch "
                     f"{torch.__version__}: max diff {gap(lo_now, up_now):.1e}; vs ours {gap(b.lower, b.upper):.1e}; "
                     f"outputs PGD drives outside: auto_LiRPA {escaped(r['lo'], r['up'])} of {fmin.numel()}, "
                     f"ours {escaped(b.lower, b.upper)}")
        print(lines[-1], flush=True)
    return lines


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--dump":  # under the old torch: argparse only, no harness
        ap = argparse.ArgumentParser(prog="python -m bench.auto_lirpa_old_torch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
        ap.add_argument("--dump", metavar="FILE", required=True, help="run auto_LiRPA here, save its bounds")
        dump(ap.parse_args(argv).dump)
        return 0
    from .harness import bench_parser, parse_bench_args, write_results

    ap = bench_parser(__doc__, "bench.auto_lirpa_old_torch")
    ap.add_argument("--compare", metavar="FILE", required=True,
                    help="bounds saved by --dump under torch 1.13: compare with auto_LiRPA here, ours and PGD")
    args = parse_bench_args(ap, argv)
    lines = compare(args.compare)
    write_results(args, "auto_lirpa_old_torch", {"dump": args.compare, "lines": lines},
                  ["# auto_LiRPA 0.3 under torch 1.13 and here (generated by bench/auto_lirpa_old_torch.py)", "",
                   *lines])
    return 0


if __name__ == "__main__":
    sys.exit(main())
