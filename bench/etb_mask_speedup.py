"""Blockwise-mask ETB (``mask="etb"``) against another commit, and against its flop floor (CPU).

The training path (``BoundedModel(model, method="etb", mask="etb", clip=(0, 1)).robust_loss`` forward
and backward) and ``bounds(..., mask="etb")`` without gradients, on the MNIST CNNs of
``etbkernels/training/data.py`` (with their Normalize layer), timed against ``--commit`` by
:func:`bench.versus_commit.compare` (worker processes, interleaved rounds, medians).

Floors, for this checkout's code: the matmul and convolution calls of one chunk of the work
(forward and backward, no checkpoint recomputation; ``bench.harness.flops``' formulas), scaled to
the batch, give

- ``flops / rate``: the flops at the machine's 2048^3 matmul rate;
- ``same shapes``: each of those calls replayed alone on fresh contiguous tensors of the same shapes
  (what the same matmuls take at this machine's speed for those shapes, with no elementwise work,
  copies or Python around them);
- the bytes those calls read and write, for the memory side of the floor.

Efficiency = floor / measured time. Writes bench/results/etb_mask_speedup.{json,md}.

    python -m bench run etb_mask_speedup -- --commit 870a731
"""
from __future__ import annotations

import statistics
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .harness import parse_bench_args, write_results
from .harness.flops import flop_formula, matmul_rate
from .harness.results import bench_parser
from .harness.timing import median_seconds
from .versus_commit import add_compare_args, compare, short_commit

# key -> (model, batch, "train" | "bounds")
SETUP = r"""
import torch, etbkernels
from etbkernels.nn import BoundedModel
from etbkernels.training.data import build_model
CASES = %r
CALLS = {}
for key, (name, batch, kind) in CASES.items():
    torch.manual_seed(0)
    model = build_model(name, "mnist")
    x, y = torch.rand(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    bm = BoundedModel(model, method="etb", mask="etb", clip=(0.0, 1.0))
    def train(bm=bm, x=x, y=y):
        loss, _ = bm.robust_loss(x, y, 0.1)
        loss.backward()
        bm.model.zero_grad(set_to_none=True)
    def bounds(bm=bm, x=x):
        with torch.no_grad():
            bm.bounds(x, 0.1)
    CALLS[key] = train if kind == "train" else bounds
"""


class _Calls(TorchDispatchMode):
    """Records every aten call torch has a flop formula for: (op, args, kwargs, flops)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_formula(func)
        if formula is not None:
            spec = lambda a: ("T", tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else a  # noqa: E731
            outs = out if isinstance(out, (tuple, list)) else [out]
            nbytes = sum(a.numel() * a.element_size() for a in list(args) + list(outs) if isinstance(a, torch.Tensor))
            self.calls.append((func, [spec(a) for a in args], {k: spec(v) for k, v in kwargs.items()},
                               formula(*args, **kwargs, out_val=out), nbytes))
        return out


def _replay_seconds(calls) -> float:
    """Seconds of each distinct call replayed alone on fresh contiguous tensors, summed over all calls."""
    make = lambda a: torch.randn(a[1], dtype=a[2]) if isinstance(a, tuple) and a and a[0] == "T" else a  # noqa: E731
    seen, total = {}, 0.0
    for func, args, kwargs, _, _ in calls:
        key = (str(func), repr(args), repr(kwargs))
        if key not in seen:
            a, k = [make(x) for x in args], {n: make(v) for n, v in kwargs.items()}
            seen[key] = median_seconds(lambda: func(*a, **k), repeats=5)
        total += seen[key]
    return total


def floor(name: str, batch: int, kind: str) -> dict:
    """The work of one default chunk in this process (forward and backward, all graphs kept), scaled to ``batch``."""
    from etbkernels.network import chunking
    from etbkernels.network.build import build_graph
    from etbkernels.network.parse import lower_chain
    from etbkernels.nn import BoundedModel
    from etbkernels.training.data import build_model

    torch.manual_seed(0)
    model = build_model(name, "mnist")
    net = lower_chain(build_graph(model, torch.rand(2, 1, 28, 28)))
    chunk = min(batch, chunking.forward_chunk(net, kind == "train", 4, torch.device("cpu")))
    x, y = torch.rand(chunk, 1, 28, 28), torch.randint(0, 10, (chunk,))
    bm = BoundedModel(model, method="etb", mask="etb", clip=(0.0, 1.0))
    with _Calls() as rec:
        if kind == "train":
            bm.robust_loss(x, y, 0.1)[0].backward()
        else:
            with torch.no_grad():
                bm.bounds(x, 0.1)
    scale = batch / chunk
    return {"chunk": chunk, "gflop": scale * sum(c[3] for c in rec.calls) / 1e9,
            "gbyte": scale * sum(c[4] for c in rec.calls) / 1e9, "same_shapes_s": scale * _replay_seconds(rec.calls)}


def main(argv=None) -> int:
    parser = bench_parser(__doc__, "etb_mask_speedup")
    add_compare_args(parser, commit="870a731", rounds=3, pairs=1, threads=1)
    parser.add_argument("--cases", default="small:128:train,small:256:train,medium:128:train,medium:256:train,"
                                          "small:256:bounds,medium:256:bounds")
    args = parse_bench_args(parser, argv)
    torch.set_num_threads(args.threads)
    cases = {c: (c.split(":")[0], int(c.split(":")[1]), c.split(":")[2]) for c in args.cases.split(",")}
    rounds, pairs = args.rounds, args.pairs
    if args.quick:
        cases, rounds, pairs = {"small:8:train": ("small", 8, "train")}, 1, 1
    commit = short_commit(args.commit)
    times = compare(commit, SETUP % (cases,), list(cases), rounds, pairs, args.threads)
    rate = matmul_rate()
    rows = []
    for key, (name, batch, kind) in cases.items():
        new, old = statistics.median(times[(key, "this")]), statistics.median(times[(key, "other")])
        # each round's two calls ran back to back: their ratio is the least disturbed by load that drifts
        paired = statistics.median(o / n for o, n in zip(times[(key, "other")], times[(key, "this")]))
        f = floor(name, batch, kind)
        rows.append({"model": name, "batch": batch, "kind": kind, "old_s": old, "new_s": new, "speedup": old / new,
                     "paired_speedup": paired,
                     **f, "rate_floor_s": f["gflop"] * 1e9 / rate, "old_all": times[(key, "other")],
                     "new_all": times[(key, "this")]})
    lines = [f"# mask=\"etb\" ETB: this checkout vs {commit}, and the flop floor (CPU, {args.threads} thread(s))", "",
             f"Times: medians of {rounds * pairs} interleaved rounds ({pairs} pair(s) of worker processes); "
             "old/new per round: the median of the rounds' ratios. "
             f"train = `BoundedModel(model, method=\"etb\", mask=\"etb\", clip=(0, 1)).robust_loss(x, y, 0.1)` "
             f"forward + backward; bounds = `bounds(..., mask=\"etb\")` without gradients. Matmul rate "
             f"{rate / 1e9:.1f} GFLOP/s (2048^3 torch.mm).", "",
             "| model | batch | call | old s | new s | old/new | old/new per round | GFLOP | GB (matmul operands) "
             "| floor flops/rate s | floor same shapes s | efficiency (same shapes) | efficiency (flops/rate) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['kind']} | {r['old_s']:.3f} | {r['new_s']:.3f} | "
                     f"{r['speedup']:.2f} | {r['paired_speedup']:.2f} | {r['gflop']:.1f} | {r['gbyte']:.2f} | {r['rate_floor_s']:.3f} | "
                     f"{r['same_shapes_s']:.3f} | {r['same_shapes_s'] / r['new_s']:.0%} | "
                     f"{r['rate_floor_s'] / r['new_s']:.0%} |")
    write_results(args, "etb_mask_speedup", {"commit": commit, "threads": args.threads, "rounds": rounds,
                                             "pairs": pairs, "matmul_rate": rate, "rows": rows}, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
