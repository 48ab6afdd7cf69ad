"""CPU benchmark of the block ops: ETB (fused) vs IBP vs the naive reference vs the limit.

For each shape (N, n, h, m) it reports, in one run: median time of etb_block forward,
forward+backward, ibp_block, the naive reference that materializes P = W2 S W1 (N x m x n),
and the limit: one matmul doing the same 2*N*m*h*n flops (into a preallocated output); the ratios to that limit; achieved
GFLOP/s (dense-equivalent and on the active units the kernel really multiplies); and the peak
extra memory of each method (fresh subprocess each). Results: bench/results/block_cpu.{json,md,png}.

    python -m bench run block                   # the default shapes (python -m bench.bench_block)
    python -m bench run block --quick           # one tiny shape, peak memory of etb_fwd only: a smoke run
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

import etbkernels as E
from etbkernels import reference as R
from etbkernels.testing import random_block

from .harness import bench_parser, interleaved_medians, parse_bench_args, peak_in_child, report_peak, write_results

DEFAULT_SHAPES = [(64, 784, 1024, 1024), (256, 784, 1024, 10), (256, 784, 512, 512), (1, 3072, 1024, 1024)]
QUICK_SHAPES = [(8, 64, 96, 32)]
METHODS = ["etb_fwd", "etb_fwd_bwd", "ibp_fwd", "naive_ref_fwd", "same_flops_matmul"]


def make_calls(shape, dtype=torch.float32, eps=0.02):
    """The benchmarked calls for one shape, plus the fraction of active hidden units."""
    N, n, h, m = shape
    blk = random_block(N, n, h, m, dtype=dtype, eps=eps, seed=1)
    args = blk.args()
    leaves = [t.detach().clone().requires_grad_(True) for t in args]
    a = torch.randn(N * m, h, dtype=dtype)
    b = torch.randn(h, n, dtype=dtype)
    c = torch.empty(N * m, n, dtype=dtype)  # preallocated: the limit should not pay for page faults

    def etb_fwd_bwd():
        bb = E.etb_block(*leaves)
        (bb.center.sum() + bb.radius.sum()).backward()
        for t in leaves:
            t.grad = None

    calls = {
        "etb_fwd": lambda: E.etb_block(*args),
        "etb_fwd_bwd": etb_fwd_bwd,
        "ibp_fwd": lambda: E.ibp_block(*args),
        "naive_ref_fwd": lambda: R.etb_block_ref(*args),
        "same_flops_matmul": lambda: torch.mm(a, b, out=c),
    }
    active = E.ops.etb_block(*args, None, False)[2].mean().item()
    return calls, active


def _peak_child(method: str, shape):
    report_peak(lambda: make_calls(shape)[0][method])


def run(shapes, repeats: int, peak_methods=METHODS):
    rows = []
    for shape in shapes:
        N, n, h, m = shape
        calls, active = make_calls(shape)
        flops = 2.0 * N * m * h * n
        big = N * m * n > 2e8  # skip the naive reference where its P would be > 800 MB
        if big:
            calls.pop("naive_ref_fwd")
        t = interleaved_medians(calls, repeats=repeats)
        base = t["same_flops_matmul"]["median_s"]
        row = {"shape": {"N": N, "n": n, "h": h, "m": m}, "flops_dense": flops, "active_fraction": active,
               "min_bytes": 4 * (N * n * 2 + h * n + m * h + h + m + N * m * 2), "methods": {}}
        for name in METHODS:
            if name not in t:
                continue
            entry = dict(t[name])
            entry["ratio_to_same_flops_matmul"] = entry["median_s"] / base
            if name == "etb_fwd":
                entry["gflops_dense_equiv"] = flops / entry["median_s"] / 1e9
                entry["gflops_active"] = flops * active / entry["median_s"] / 1e9
            if name == "same_flops_matmul":
                entry["gflops"] = flops / entry["median_s"] / 1e9
            if name in peak_methods:
                entry["peak_extra_mib"] = peak_in_child("bench.bench_block", [name, *shape])["extra_mib"]
            row["methods"][name] = entry
        naive = row["methods"].get("naive_ref_fwd")
        if naive and "peak_extra_mib" in naive:
            row["naive_over_etb_peak_memory"] = naive["peak_extra_mib"] / max(row["methods"]["etb_fwd"]["peak_extra_mib"], 1e-3)
            row["etb_speedup_over_naive"] = naive["median_s"] / row["methods"]["etb_fwd"]["median_s"]
        rows.append(row)
        print(_row_text(row), flush=True)
    return rows


def _peak_text(e) -> str:
    return f"{e['peak_extra_mib']:.1f}" if "peak_extra_mib" in e else "-"


def _row_text(row) -> str:
    s = row["shape"]
    lines = [f"(N, n, h, m) = ({s['N']}, {s['n']}, {s['h']}, {s['m']}), active ReLUs {row['active_fraction']:.2f}"]
    for name, e in row["methods"].items():
        lines.append(f"  {name:18s} {e['median_s'] * 1e3:9.1f} ms  x{e['ratio_to_same_flops_matmul']:5.2f} of matmul"
                     f"  peak +{_peak_text(e):>8s} MiB")
    return "\n".join(lines)


def to_markdown(result) -> list:
    out = ["# Block benchmark (CPU)", "", f"float32, eps 0.02, median of {result['repeats']} interleaved repeats.", "",
           "| N, n, h, m | active | method | time (ms) | / same-flops matmul | GFLOP/s | peak extra (MiB) |",
           "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        s = row["shape"]
        for name, e in row["methods"].items():
            gf = e.get("gflops_active", e.get("gflops", ""))
            gf = f"{gf:.1f}" if gf != "" else ""
            out.append(f"| {s['N']}, {s['n']}, {s['h']}, {s['m']} | {row['active_fraction']:.2f} | {name} | "
                       f"{e['median_s'] * 1e3:.1f} | {e['ratio_to_same_flops_matmul']:.2f} | {gf} | {_peak_text(e)} |")
    out.append("\nGFLOP/s: for etb_fwd, on the active hidden units it multiplies (2*N*m*h_active*n); for the "
               "matmul, its 2*N*m*h*n. The naive reference is skipped where its P would exceed 800 MB.")
    for row in result["rows"]:
        if "naive_over_etb_peak_memory" in row:
            s = row["shape"]
            out.append(f"- ({s['N']}, {s['n']}, {s['h']}, {s['m']}): naive/fused peak memory "
                       f"{row['naive_over_etb_peak_memory']:.1f}x, fused is {row['etb_speedup_over_naive']:.2f}x faster.")
    return out


def plot(result, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(10.5, 4))
    width = 0.16
    for i, name in enumerate(METHODS):
        xs, ys = [], []
        for j, row in enumerate(rows):
            if name in row["methods"]:
                xs.append(j + (i - 2) * width)
                ys.append(row["methods"][name]["ratio_to_same_flops_matmul"])
        ax.bar(xs, ys, width, label=name)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(rows)), [",".join(str(v) for v in r["shape"].values()) for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("time / same-flops matmul")
    ax.set_xlabel("N, n, h, m")
    ax.set_title("etbkernels block ops on CPU (lower is better)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--peak":  # the child of peak_in_child: METHOD N n h m
        _peak_child(argv[1], tuple(int(v) for v in argv[2:6]))
        return 0
    p = bench_parser(__doc__, "bench.bench_block")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 5; --quick 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parse_bench_args(p, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 5)
    rows = run(QUICK_SHAPES if args.quick else DEFAULT_SHAPES, repeats,
               peak_methods=["etb_fwd"] if args.quick else METHODS)
    result = {"repeats": repeats, "rows": rows}
    name = "block_cpu" + (f"_{args.threads}t" if args.threads else "")
    write_results(args, name, result, to_markdown(result), figure=lambda path: plot(result, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
