"""Tile sweep of the Triton tensor-core radius kernels on a GPU (run by bench/gpu_check.sh).

For each shape (N, n, h, m) and each tile (BR, BC, BK, warps, stages) it times
``etbkernels.triton_radius.tc_radius`` (the forward: A = W2, Bt = W1^T) and ``tc_radius_grad`` (the
backward's T / dr step: A = W1^T, Bt = W2; in TF32 also storing T in both layouts) in TF32 and BF16,
the exact-fp32 forward (``exact=True``, against an fp32 bmm), and ``tc_weight_grad`` (dW1, dW2^T;
legacy and wave-sized splits), with an all-ones mask (2 N m n h flops), next to a same-flops
torch.bmm measured in the same run. The defaults of
``triton_radius.default_tile`` come from this table. Writes bench/results/triton_sweep_<device>.{json,md}
(e.g. triton_sweep_h100).

    python -m bench run triton_sweep             # python -m bench.triton_sweep (bench/gpu_check.sh runs it)
    python -m bench run triton_sweep --quick     # one small shape, the default tiles only
"""
from __future__ import annotations

import datetime as dt
import json
import os
import sys

import torch

from etbkernels._internal import triton_launch

from .bench_cuda import device_tag, timed
from .harness import bench_parser, parse_bench_args, write_results

TILES_TF32 = ["128,256,32,8,3", "128,128,32,8,3", "64,256,32,8,3"]
TILES_BF16 = ["128,256,64,8,3"]
TILES_WGRAD = ["128,256,32,8,3", "128,128,32,8,3", "256,128,32,8,3", "128,256,32,8,4"]
# the exact-fp32 forward (exact=True: FMA products, ETBK_CUDA_FFMA=triton), against an fp32 bmm; and,
# for information only, 3xTF32 products (each fp32 operand as the sum of two TF32 numbers: about fp32
# accuracy on tensor cores, but not what torch's "highest" promises, so no path uses it)
TILES_EXACT = ["128,256,32,8,3", "128,128,32,8,3", "64,128,32,4,3", "128,128,16,8,2"]
TILES_TF32X3 = ["128,256,32,8,3"]


def max_rel_err(out, a, bt, s, wcol, samples=2):
    """Largest relative error of out[:samples] against float64 (P = A diag(s) Bt^T, small for 2 samples)."""
    a, bt, s, wcol = a.double(), bt.double(), s[:samples].double(), wcol[:samples].double()
    ref = ((a * s[:, None, :]) @ bt.t()).abs().mul_(wcol[:, None, :]).sum(-1)
    return ((out[:samples].double() - ref).abs() / ref.abs().clamp_min(1e-30)).max().item()


def sweep_shape(tr, N, n, h, m, reps, tiles_tf32, tiles_bf16, tiles_wgrad, grad, tiles_exact=(), timer=timed,
                device="cuda", tiles_tf32x3=()):
    """The rows of one shape. ``timer(fn, reps)`` gives milliseconds (CUDA events; the CPU smoke test
    of this script passes its own, with ``device="cpu"`` in Triton's interpreter)."""
    torch.manual_seed(0)
    w1 = torch.randn(h, n, device=device) / n ** 0.5
    w2 = torch.randn(m, h, device=device) / h ** 0.5
    s = torch.ones(N, h, device=device)
    r = torch.rand(N, n, device=device)
    g = torch.randn(N, m, device=device)
    flops = 2.0 * N * m * n * h
    torch.set_float32_matmul_precision("high")
    A, B = w2.expand(N, m, h).contiguous(), w1.expand(N, h, n).contiguous()
    bmm_tf32 = timer(lambda: torch.bmm(A, B), reps)
    bmm_bf16 = timer(lambda: torch.bmm(A.bfloat16(), B.bfloat16()), reps)  # includes the casts
    Ab, Bb = A.bfloat16(), B.bfloat16()
    bmm_bf16 = min(bmm_bf16, timer(lambda: torch.bmm(Ab, Bb), reps))
    torch.set_float32_matmul_precision("highest")
    bmm_fp32 = timer(lambda: torch.bmm(A, B), reps) if tiles_exact or tiles_tf32x3 else None
    torch.set_float32_matmul_precision("high")
    del A, B, Ab, Bb
    if device == "cuda":
        torch.cuda.empty_cache()
    rows = []
    for dtype, tiles, base, precision in ((torch.float32, tiles_tf32, bmm_tf32, "tf32"),
                                          (torch.bfloat16, tiles_bf16, bmm_bf16, "tf32"),
                                          (torch.float32, tiles_exact, bmm_fp32, "ieee"),
                                          (torch.float32, tiles_tf32x3, bmm_fp32, "tf32x3")):
        a, bt = w2.to(dtype).contiguous(), w1.t().to(dtype).contiguous()
        exact = precision != "tf32"
        for tile in tiles:
            os.environ["ETBK_TRITON_TILE"] = tile
            label = {"tf32": "", "ieee": " exact", "tf32x3": " tf32x3"}[precision]
            row = {"shape": [N, n, h, m], "dtype": str(dtype).replace("torch.", "") + label, "tile": tile, "bmm_ms": base}
            try:
                fwd = lambda: triton_launch(a, bt, s, r, None, precision=precision)[0]  # noqa: E731
                row["fwd_ms"] = timer(fwd, reps)
                row["fwd_ratio_vs_bmm"] = base / row["fwd_ms"]
                row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
                row["max_rel_err"] = max_rel_err(fwd(), a, bt, s, r)
                if grad and not exact:  # the backward's kernel on a 64-sample chunk (T is C m n floats)
                    C = min(N, 64)
                    row["grad_chunk64_ms"] = timer(lambda: tr.tc_radius_grad(bt, a, s[:C], g[:C], r[:C]), reps)
                    if dtype == torch.float32:  # T in both layouts (ETBK_TRITON_T_LAYOUT=dual)
                        row["grad_dual_chunk64_ms"] = timer(
                            lambda: tr.tc_radius_grad(bt, a, s[:C], g[:C], r[:C], True), reps)
            except Exception as e:  # a tile that does not compile or fit: report it, go on
                row["error"] = f"{type(e).__name__}: {str(e)[:120]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    os.environ.pop("ETBK_TRITON_TILE", None)
    if grad:  # the weight-gradient kernel on a 64-sample chunk of T (the backward calls it twice per chunk)
        C = min(N, 64)
        T = torch.randn(C, n, m, device=device)  # T[b, k, j] as tc_radius_grad writes it
        T2 = T.transpose(1, 2).contiguous()
        w2t, w1c = w2.t().contiguous(), w1.contiguous()
        for tile in tiles_wgrad:
            os.environ["ETBK_TRITON_WGRAD_TILE"] = tile
            row = {"shape": [N, n, h, m], "dtype": "wgrad tf32 (64 samples)", "tile": tile, "bmm_ms": None}
            try:
                for policy, suffix in (("legacy", ""), ("waves", "_waves")):  # ETBK_TRITON_SPLITS
                    os.environ["ETBK_TRITON_SPLITS"] = policy
                    row["dw1" + suffix + "_ms"] = timer(lambda: tr.tc_weight_grad(w2t, T, s[:C]), reps)
                    row["dw2" + suffix + "_ms"] = timer(lambda: tr.tc_weight_grad(w1c, T2, s[:C]), reps)
                row["wgrad_tflops"] = 2 * 2.0 * C * m * n * h / (row["dw1_ms"] + row["dw2_ms"]) / 1e9
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {str(e)[:120]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
        os.environ.pop("ETBK_TRITON_WGRAD_TILE", None)
        os.environ.pop("ETBK_TRITON_SPLITS", None)
        row = {"shape": [N, n, h, m], "dtype": "T transpose copy (64 samples)", "tile": "-", "bmm_ms": None,
               "dw1_ms": timer(lambda: T.transpose(1, 2).contiguous(), reps)}
        rows.append(row)
        del T, T2
    return rows


def markdown(meta: dict, rows: list) -> str:
    """The sweep's table."""
    f = lambda x, d=2: "-" if x is None else f"{x:.{d}f}"  # noqa: E731
    lines = [f"# Triton radius tile sweep: {meta['device']} (torch {meta['torch']}, triton {meta['triton']})", "",
             "bmm: TF32 for float32 and bfloat16's for bfloat16, fp32 (TF32 off) for \"float32 exact\" (FMA products) "
             "and \"float32 tf32x3\" (3xTF32 products, for information: no path uses them). The operands are not "
             "TF32-rounded here (the error column includes the tensor cores' truncation). "
             "Backward kernels on 64-sample chunks; \"waves\": ETBK_TRITON_SPLITS=waves.", "",
             "| N,n,h,m | dtype | BR,BC,BK,warps,stages | fwd ms | TF/s | bmm ms | fwd / bmm | max rel. err (2 samples) "
             "| T kernel ms | T kernel, both layouts ms | dW1 / dW2^T kernels ms (TF/s) | dW1 / dW2^T, waves ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {','.join(map(str, r['shape']))} | {r['dtype']} | {r['tile']} | {f(r.get('fwd_ms'))} "
                     f"| {f(r.get('fwd_tflops'), 0)} | {f(r['bmm_ms'])} | {f(r.get('fwd_ratio_vs_bmm'))} "
                     f"| {'-' if r.get('max_rel_err') is None else format(r['max_rel_err'], '.1e')} "
                     f"| {f(r.get('grad_chunk64_ms'))} | {f(r.get('grad_dual_chunk64_ms'))} "
                     f"| {f(r.get('dw1_ms'))} / {f(r.get('dw2_ms'))} ({f(r.get('wgrad_tflops'), 0)}) "
                     f"| {f(r.get('dw1_waves_ms'))} / {f(r.get('dw2_waves_ms'))} {r.get('error', '')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = bench_parser(__doc__, "bench.triton_sweep")
    ap.add_argument("--shapes", default=None, help="N,n,h,m;... (default 256,784,1024,1024;256,3072,1024,1024; "
                                                   "--quick: 64,256,256,256)")
    ap.add_argument("--reps", type=int, default=None, help="default 5 (--quick: 2)")
    ap.add_argument("--tf32", default=";".join(TILES_TF32))
    ap.add_argument("--bf16", default=";".join(TILES_BF16))
    ap.add_argument("--wgrad", default=";".join(TILES_WGRAD))
    ap.add_argument("--exact", default=";".join(TILES_EXACT))
    ap.add_argument("--tf32x3", default=";".join(TILES_TF32X3))
    ap.add_argument("--no-grad", action="store_true")
    args = parse_bench_args(ap, argv)
    if args.quick:  # the first tile of each kind
        for key in ("tf32", "bf16", "wgrad", "exact", "tf32x3"):
            setattr(args, key, getattr(args, key).split(";")[0])
    args.shapes = args.shapes or ("64,256,256,256" if args.quick else "256,784,1024,1024;256,3072,1024,1024")
    args.reps = args.reps or (2 if args.quick else 5)
    if not torch.cuda.is_available():
        print("triton_sweep: needs a GPU", file=sys.stderr)
        return 2
    from etbkernels import triton_radius as tr
    if not tr.available():
        print("triton_sweep: Triton is not installed", file=sys.stderr)
        return 2
    rows = []
    for spec in args.shapes.split(";"):
        N, n, h, m = (int(x) for x in spec.split(","))
        rows += sweep_shape(tr, N, n, h, m, args.reps, [t for t in args.tf32.split(";") if t],
                            [t for t in args.bf16.split(";") if t], [t for t in args.wgrad.split(";") if t],
                            not args.no_grad, [t for t in args.exact.split(";") if t],
                            tiles_tf32x3=[t for t in args.tf32x3.split(";") if t])
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": __import__("triton").__version__,
            "time": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    write_results(args, f"triton_sweep_{device_tag(meta['device'])}", {"meta": meta, "rows": rows},
                  markdown(meta, rows).splitlines())
    return 0


if __name__ == "__main__":
    sys.exit(main())
