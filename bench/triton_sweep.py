"""Tile sweep of the Triton tensor-core radius kernels on a GPU (run by bench/gpu_check.sh).

For each shape (N, n, h, m) and each tile (BR, BC, BK, warps, stages) it times
``etbkernels.triton_radius.tc_radius`` (the forward: A = W2, Bt = W1^T) and ``tc_radius_grad`` (the
backward's T / dr step: A = W1^T, Bt = W2) in TF32 and BF16, and ``tc_weight_grad`` (dW1, dW2^T), with an all-ones mask (2 N m n h
flops), next to a same-flops torch.bmm measured in the same run. The defaults of
``triton_radius.default_tile`` come from this table. Writes bench/results/triton_sweep_<stamp>.{json,md}.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from bench.bench_cuda import timed, write_results  # noqa: E402

TILES_TF32 = ["128,256,32,8,3", "128,128,32,8,3"]
TILES_BF16 = ["128,256,64,8,3"]
TILES_WGRAD = ["128,256,32,8,3", "128,128,32,8,3", "256,128,32,8,3", "128,256,32,8,4"]


def sweep_shape(tr, N, n, h, m, reps, tiles_tf32, tiles_bf16, tiles_wgrad, grad):
    torch.manual_seed(0)
    w1 = torch.randn(h, n, device="cuda") / n ** 0.5
    w2 = torch.randn(m, h, device="cuda") / h ** 0.5
    s = torch.ones(N, h, device="cuda")
    r = torch.rand(N, n, device="cuda")
    g = torch.randn(N, m, device="cuda")
    flops = 2.0 * N * m * n * h
    torch.set_float32_matmul_precision("high")
    A, B = w2.expand(N, m, h).contiguous(), w1.expand(N, h, n).contiguous()
    bmm_tf32 = timed(lambda: torch.bmm(A, B), reps)
    bmm_bf16 = timed(lambda: torch.bmm(A.bfloat16(), B.bfloat16()), reps)  # includes the casts
    Ab, Bb = A.bfloat16(), B.bfloat16()
    bmm_bf16 = min(bmm_bf16, timed(lambda: torch.bmm(Ab, Bb), reps))
    del A, B, Ab, Bb
    torch.cuda.empty_cache()
    rows = []
    for dtype, tiles, base in ((torch.float32, tiles_tf32, bmm_tf32), (torch.bfloat16, tiles_bf16, bmm_bf16)):
        a, bt = w2.to(dtype).contiguous(), w1.t().to(dtype).contiguous()
        for tile in tiles:
            os.environ["ETBK_TRITON_TILE"] = tile
            row = {"shape": [N, n, h, m], "dtype": str(dtype).replace("torch.", ""), "tile": tile, "bmm_ms": base}
            try:
                row["fwd_ms"] = timed(lambda: tr.tc_radius(a, bt, s, r), reps)
                row["fwd_ratio_vs_bmm"] = base / row["fwd_ms"]
                row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
                if grad:  # the backward's kernel on a 64-sample chunk (T is C m n floats)
                    C = min(N, 64)
                    row["grad_chunk64_ms"] = timed(lambda: tr.tc_radius_grad(bt, a, s[:C], g[:C], r[:C]), reps)
            except Exception as e:  # a tile that does not compile or fit: report it, go on
                row["error"] = f"{type(e).__name__}: {str(e)[:120]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
    os.environ.pop("ETBK_TRITON_TILE", None)
    if grad:  # the weight-gradient kernel on a 64-sample chunk of T (the backward calls it twice per chunk)
        C = min(N, 64)
        T = torch.randn(C, n, m, device="cuda")  # T[b, k, j] as tc_radius_grad writes it
        T2 = T.transpose(1, 2).contiguous()
        w2t, w1c = w2.t().contiguous(), w1.contiguous()
        for tile in tiles_wgrad:
            os.environ["ETBK_TRITON_WGRAD_TILE"] = tile
            row = {"shape": [N, n, h, m], "dtype": "wgrad tf32 (64 samples)", "tile": tile, "bmm_ms": None}
            try:
                row["dw1_ms"] = timed(lambda: tr.tc_weight_grad(w2t, T, s[:C]), reps)
                row["dw2_ms"] = timed(lambda: tr.tc_weight_grad(w1c, T2, s[:C]), reps)
                row["wgrad_tflops"] = 2 * 2.0 * C * m * n * h / (row["dw1_ms"] + row["dw2_ms"]) / 1e9
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {str(e)[:120]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
        os.environ.pop("ETBK_TRITON_WGRAD_TILE", None)
        row = {"shape": [N, n, h, m], "dtype": "T transpose copy (64 samples)", "tile": "-", "bmm_ms": None,
               "dw1_ms": timed(lambda: T.transpose(1, 2).contiguous(), reps)}
        rows.append(row)
        del T, T2
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="256,784,1024,1024;256,3072,1024,1024")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tf32", default=";".join(TILES_TF32))
    ap.add_argument("--bf16", default=";".join(TILES_BF16))
    ap.add_argument("--wgrad", default=";".join(TILES_WGRAD))
    ap.add_argument("--no-grad", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
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
                            not args.no_grad)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": __import__("triton").__version__,
            "time": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    f = lambda x, d=2: "-" if x is None else f"{x:.{d}f}"  # noqa: E731
    lines = [f"# Triton radius tile sweep: {meta['device']} (torch {meta['torch']}, triton {meta['triton']})", "",
             "| N,n,h,m | dtype | BR,BC,BK,warps,stages | fwd ms | TF/s | bmm ms | fwd / bmm | T kernel (64 samples) ms "
             "| dW1 / dW2^T kernels (64 samples) ms (TF/s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {','.join(map(str, r['shape']))} | {r['dtype']} | {r['tile']} | {f(r.get('fwd_ms'))} "
                     f"| {f(r.get('fwd_tflops'), 0)} | {f(r['bmm_ms'])} | {f(r.get('fwd_ratio_vs_bmm'))} "
                     f"| {f(r.get('grad_chunk64_ms'))} | {f(r.get('dw1_ms'))} / {f(r.get('dw2_ms'))} "
                     f"({f(r.get('wgrad_tflops'), 0)}) {r.get('error', '')} |")
    write_results(args.out, "triton_sweep", {"meta": meta, "rows": rows}, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
