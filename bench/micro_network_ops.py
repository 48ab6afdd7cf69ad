"""Micro-benchmarks behind small implementation choices in etbkernels/network (CPU).

- the ETB radius of dense directions (N, n, out): ``D.abs().sum(1)`` (used) against
  ``torch.linalg.vector_norm(D, ord=1, dim=1)`` (used before), at the shapes of the medium and
  small CNN's dense layers in a cache-sized chunk;
- one tap of the patches convolution, a strided slice of the patches times a weight tap:
  ``x.reshape(-1, C) @ w.T`` (used) against ``x @ w.T`` with the weight requiring grad or not
  (a frozen model): torch.matmul folds a strided x into one mm only when the weight requires grad;
- a conv's transpose on 512 channels-last images (the pull-back's batch): oneDNN's
  ``conv_transpose2d`` against one matmul and a col2im (``F.fold``), for 1- and 3-channel inputs,
  strides 1 and 2: ``ConvOp.transpose`` uses the second for 1-channel strided convs.

Medians of --repeats after a warm-up. Writes bench/results/micro_network_ops.{json,md}.

    python -m bench run micro_network_ops        # python -m bench.micro_network_ops
"""
from __future__ import annotations

import sys

import torch

from .harness import bench_parser, interleaved_medians, parse_bench_args, write_results

SHAPES = [(4, 784, 512), (8, 784, 100), (4, 784, 10)]
# (patches shape (B, H, W, C0, R, R, C_in), C_out, stride): the medium CNN's third and fourth conv
TAPS = [((4, 12, 12, 1, 6, 6, 32), 64, 1), ((4, 10, 10, 1, 10, 10, 64), 64, 2)]
# (C_in, C_out, kernel, stride, padding) of a conv on 28 x 28 inputs, its transpose on 512 images
TRANSPOSES = [(ci, co, k, s, p) for ci in (1, 3) for co in (16, 64) for k, s, p in ((4, 2, 0), (4, 2, 1), (3, 2, 1),
                                                                                  (3, 1, 1))]
TRANSPOSE_IMAGES = 512


def transpose_fns(ci, co, k, s, p, images=TRANSPOSE_IMAGES, hw=28):
    """(conv_transpose2d, matmul + fold) of one conv on channels-last rows; both give the same result."""
    import torch.nn.functional as F

    o = (hw + 2 * p - k) // s + 1
    w = torch.randn(co, ci, k, k)
    y = torch.randn(images, co, o, o).contiguous(memory_format=torch.channels_last)
    op = hw - ((o - 1) * s - 2 * p + k)

    def fold():
        cols = torch.matmul(y.permute(0, 2, 3, 1).reshape(images, o * o, co), w.reshape(co, -1))
        return F.fold(cols.transpose(1, 2), (hw, hw), k, padding=p, stride=s)
    return (lambda: F.conv_transpose2d(y, w, None, s, p, op)), fold


def main(argv=None) -> int:
    ap = bench_parser(__doc__, "bench.micro_network_ops")
    ap.add_argument("--repeats", type=int, default=None, help="default 20 (--quick: 1)")
    args = parse_bench_args(ap, argv)
    args.repeats = args.repeats or (1 if args.quick else 20)
    # a smoke run: the first case of each kind, the transposes on 32 images
    shapes, taps_cases, transpose_cases = (SHAPES[:1], TAPS[:1], TRANSPOSES[:2]) if args.quick else (
        SHAPES, TAPS, TRANSPOSES)
    images = 32 if args.quick else TRANSPOSE_IMAGES
    rows = []
    for shape in shapes:
        D = torch.randn(*shape)
        torch.testing.assert_close(D.abs().sum(1), torch.linalg.vector_norm(D, ord=1, dim=1), rtol=1e-5, atol=0)
        t = interleaved_medians({"abs_sum": lambda: D.abs().sum(1),
                                 "vector_norm": lambda: torch.linalg.vector_norm(D, ord=1, dim=1)}, args.repeats)
        rows.append({"shape": list(shape), "abs_sum_ms": 1e3 * t["abs_sum"]["median_s"],
                     "vector_norm_ms": 1e3 * t["vector_norm"]["median_s"]})
    taps = []
    with torch.no_grad():
        for shape, co, stride in taps_cases:
            P = torch.randn(*shape)
            x = P[:, 0::stride, 0::stride][:, :shape[1] // stride - 2, :shape[2] // stride - 2]  # a strided tap slice
            w4 = torch.randn(co, shape[-1], 3, 3)
            w = w4[:, :, 1, 1]  # a tap of a conv weight, as in patches._PatchConv: a strided (C_out, C_in) view
            w_grad = w4.clone().requires_grad_(True)[:, :, 1, 1]
            fns = {"reshape_mm": lambda: (x.reshape(-1, x.shape[-1]) @ w.T).reshape(x.shape[:-1] + (co,)),
                   "matmul_w_grad": lambda: x @ w_grad.T, "matmul_w_frozen": lambda: x @ w.T}
            ref = fns["reshape_mm"]()
            for fn in fns.values():
                torch.testing.assert_close(fn(), ref)
            # the frozen case runs apart: interleaved, its cache-thrashing bmm would slow whatever runs next
            frozen = fns.pop("matmul_w_frozen")
            t = interleaved_medians(fns, args.repeats) | interleaved_medians({"matmul_w_frozen": frozen},
                                                                             max(3, args.repeats // 4))
            taps.append({"shape": list(x.shape), "c_out": co} | {k + "_ms": 1e3 * v["median_s"] for k, v in t.items()})
    transposes, reps = [], max(3, args.repeats // 4)
    with torch.no_grad():
        for ci, co, k, s, p in transpose_cases:
            ct, fold = transpose_fns(ci, co, k, s, p, images)
            torch.testing.assert_close(fold(), ct(), rtol=1e-4, atol=1e-4)
            t = interleaved_medians({"conv_transpose": ct, "fold": fold}, reps)
            transposes.append({"c_in": ci, "c_out": co, "kernel": k, "stride": s, "padding": p}
                              | {key + "_ms": 1e3 * v["median_s"] for key, v in t.items()})
    lines = ["# Network micro-benchmarks, CPU (generated by bench/micro_network_ops.py)", "",
             f"float32, medians of {args.repeats} "
             f"(frozen taps: {max(3, args.repeats // 4)})", "", "## Radius of dense directions", "",
             "| shape (N, n, out) | abs().sum(1) ms | vector_norm(ord=1, dim=1) ms | ratio |", "|---|---|---|---|"]
    lines += [f"| {tuple(r['shape'])} | {r['abs_sum_ms']:.3f} | {r['vector_norm_ms']:.3f} | "
              f"{r['vector_norm_ms'] / r['abs_sum_ms']:.1f} |" for r in rows]
    lines += ["", "## One tap of the patches convolution (strided slice @ weight tap)", "",
              "| slice shape | C_out | reshape + mm ms | x @ w.T, w requires grad ms | x @ w.T, frozen w ms |",
              "|---|---|---|---|---|"]
    lines += [f"| {tuple(r['shape'])} | {r['c_out']} | {r['reshape_mm_ms']:.2f} | {r['matmul_w_grad_ms']:.2f} | "
              f"{r['matmul_w_frozen_ms']:.2f} |" for r in taps]
    lines += ["", f"## A conv's transpose on {images} channels-last images, 28 x 28 input (medians of {reps})",
              "", "| C_in | C_out | kernel, stride, padding | conv_transpose2d ms | matmul + fold ms | conv_transpose / fold |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['c_in']} | {r['c_out']} | {r['kernel']}, {r['stride']}, {r['padding']} | {r['conv_transpose_ms']:.1f} "
              f"| {r['fold_ms']:.1f} | {r['conv_transpose_ms'] / r['fold_ms']:.2f} |" for r in transposes]
    write_results(args, "micro_network_ops", {"transpose_images": images, "rows": rows, "taps": taps,
                                              "transposes": transposes}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
