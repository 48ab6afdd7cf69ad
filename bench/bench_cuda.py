"""GPU benchmark of the fused ETB block kernels (run by bench/gpu_check.sh).

For each shape (N, n, h, m) it times, with CUDA events (median of several runs, after warm-up):
  - fused forward (torch.ops.etbkernels.etb_block) on the TF32, BF16 and exact-fp32 paths,
  - a same-flops torch.bmm (N, m, h) @ (N, h, n) in TF32 and in fp32 with TF32 disabled,
  - the naive reference (etbkernels.reference.etb_block_ref: materializes P for all samples),
  - a chunked cuBLAS + epilogue baseline (bmm per chunk of samples, then |P| r reduced),
  - the backward (torch.ops.etbkernels.etb_block_backward) and its ratio to the forward,
  - the peak extra device memory of forward and backward, vs N*m*n*4 bytes (one P for all samples),
  - the variants that are not the default yet (VARIANTS), each with the default's baselines, so one
    GPU run can decide whether to switch.
The mask is all-ones (every hidden unit active) so the fused kernel does exactly 2 N m n h flops,
the same as the bmm; a second row per shape uses the natural ETB mask (fewer active units).
Writes bench/results/gpu_<device>.{json,md} (e.g. gpu_h100) and prints the markdown table last.

    python -m bench run cuda                     # python -m bench.bench_cuda (bench/gpu_check.sh runs it)
    python -m bench run cuda --quick             # one small shape, 3 repeats
"""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import sys

import torch

import etbkernels
from etbkernels import ops, reference

from .harness import bench_parser, cuda_ms, parse_bench_args, write_results


# Kernel variants behind environment switches, not the default until a GPU run shows them faster:
# the exact-fp32 forward on the Triton kernel (FMA products), and the Triton TF32 backward with T
# stored in both layouts by its kernel and / or wave-sized weight-gradient splits.
VARIANTS = {
    "ffma_triton": {"ETBK_CUDA_FFMA": "triton"},
    "dual": {"ETBK_TRITON_T_LAYOUT": "dual"},
    "waves": {"ETBK_TRITON_SPLITS": "waves"},
    "dual_waves": {"ETBK_TRITON_T_LAYOUT": "dual", "ETBK_TRITON_SPLITS": "waves"},
}


@contextlib.contextmanager
def env(variables: dict):
    """Sets environment variables for the block (the C++ side reads them on every call)."""
    old = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def timed(fn, reps: int, warmup: int = 2) -> float:
    """Median milliseconds of fn() over reps runs (CUDA events; bench/harness/timing.py)."""
    return cuda_ms(fn, reps, warmup)


def device_tag(name: str) -> str:
    """A short file-name tag for a GPU: "NVIDIA H100 80GB HBM3" -> "h100" ("gpu" when none is found)."""
    m = re.search(r"\b([A-Z]{1,2}\d{1,4}|\d{4})\b", name)
    return m.group(1).lower() if m else "gpu"


def peak_extra(fn) -> int:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak


def set_precision(p: str):
    torch.set_float32_matmul_precision(p)


def chunked_baseline(c, r, w1, w2, s, chunk=16):
    """cuBLAS P per chunk of samples + an |P| r epilogue: bounded memory, P round-trips through HBM."""
    N = c.shape[0]
    out = torch.empty(N, w2.shape[0], device=c.device, dtype=c.dtype)
    for b0 in range(0, N, chunk):
        sl = slice(b0, min(N, b0 + chunk))
        P = torch.bmm(w2 * s[sl, None, :], w1.expand(s[sl].shape[0], -1, -1))
        out[sl] = torch.einsum("bjk,bk->bj", P.abs_(), r[sl])
    return out


def bench_shape(N, n, h, m, reps, do_naive=True):
    torch.manual_seed(0)
    dev = "cuda"
    c = torch.randn(N, n, device=dev)
    r = torch.rand(N, n, device=dev) * 0.05
    w1 = torch.randn(h, n, device=dev) / n ** 0.5
    b1 = torch.randn(h, device=dev) * 0.1
    w2 = torch.randn(m, h, device=dev) / h ** 0.5
    b2 = torch.randn(m, device=dev) * 0.1
    ones = torch.ones(N, h, device=dev)
    flops = 2.0 * N * m * n * h
    res = {"shape": [N, n, h, m], "gflop_dense": flops / 1e9}

    def fused(mask):
        return lambda: ops.etb_block(c, r, w1, b1, w2, b2, mask, False)

    for path in ("high", "medium", "highest"):
        set_precision(path)
        res[f"fused_fwd_{path}_ms"] = timed(fused(ones), reps)
        res[f"fused_fwd_{path}_natural_mask_ms"] = timed(fused(None), reps)
    # TF32 / BF16 run on Triton's wgmma kernels where installed; the hand-written mma.sync kernel beside them.
    res["tc_kernel"] = "triton" if etbkernels.has_triton_kernels() else "mma.sync"
    os.environ["ETBK_CUDA_TC"] = "mma"
    for path in ("high", "medium"):
        set_precision(path)
        res[f"fused_fwd_{path}_mma_ms"] = timed(fused(ones), reps)
    os.environ.pop("ETBK_CUDA_TC")
    set_precision("highest")
    s_nat = ops.etb_block(c, r, w1, b1, w2, b2, None, False)[2]
    res["active_fraction"] = s_nat.mean().item()

    # Same-flops bmm: (N, m, h) @ (N, h, n). The A operand is W2 broadcast (as P = W2 S W1).
    A = w2.expand(N, m, h).contiguous()  # materialized once: the timing is the GEMM only
    B = w1.expand(N, h, n).contiguous()
    for path, name in (("high", "bmm_tf32_ms"), ("highest", "bmm_fp32_ms")):
        set_precision(path)
        res[name] = timed(lambda: torch.bmm(A, B), reps)
    del A, B
    torch.cuda.empty_cache()
    set_precision("highest")
    res["chunked_cublas_fp32_ms"] = timed(lambda: chunked_baseline(c, r, w1, w2, ones), max(2, reps // 2))
    set_precision("high")
    res["chunked_cublas_tf32_ms"] = timed(lambda: chunked_baseline(c, r, w1, w2, ones), max(2, reps // 2))
    if do_naive:
        try:
            set_precision("high")
            res["naive_ref_tf32_ms"] = timed(lambda: reference.etb_block_ref(c, r, w1, b1, w2, b2, mask=ones), 2, 1)
            set_precision("highest")
            res["naive_ref_fp32_ms"] = timed(lambda: reference.etb_block_ref(c, r, w1, b1, w2, b2, mask=ones), 2, 1)
        except torch.OutOfMemoryError:
            res["naive_ref_tf32_ms"] = res["naive_ref_fp32_ms"] = None
        torch.cuda.empty_cache()

    # Backward (fused-forward's saved mask; the natural mask, as in training).
    g_c, g_r = torch.randn(N, m, device=dev), torch.randn(N, m, device=dev)
    for path in ("high", "highest", "medium"):
        set_precision(path)
        s = ops.etb_block(c, r, w1, b1, w2, b2, ones, False)[2]
        res[f"bwd_{path}_ms"] = timed(lambda: ops.etb_block_backward(g_c, g_r, c, r, w1, b1, w2, s, False),
                                      max(2, reps // 2))
        res[f"bwd_over_fwd_{path}"] = res[f"bwd_{path}_ms"] / res[f"fused_fwd_{path}_ms"]
    os.environ["ETBK_CUDA_TC"] = "mma"
    set_precision("high")
    res["bwd_high_mma_ms"] = timed(lambda: ops.etb_block_backward(g_c, g_r, c, r, w1, b1, w2, s, False),
                                   max(2, reps // 2))
    os.environ.pop("ETBK_CUDA_TC")
    # the variants (VARIANTS), next to the default's figures above
    set_precision("highest")
    with env(VARIANTS["ffma_triton"]):
        res["fused_fwd_highest_triton_ms"] = timed(fused(ones), reps)
    set_precision("high")
    s = ops.etb_block(c, r, w1, b1, w2, b2, ones, False)[2]
    for name in ("dual", "waves", "dual_waves"):
        with env(VARIANTS[name]):
            res[f"bwd_high_{name}_ms"] = timed(lambda: ops.etb_block_backward(g_c, g_r, c, r, w1, b1, w2, s, False),
                                               max(2, reps // 2))
        res[f"bwd_over_fwd_high_{name}"] = res[f"bwd_high_{name}_ms"] / res["fused_fwd_high_ms"]
    set_precision("high")
    res["fwd_peak_extra_MiB"] = peak_extra(fused(ones)) / 2**20
    s = ops.etb_block(c, r, w1, b1, w2, b2, ones, False)[2]
    res["bwd_peak_extra_MiB"] = peak_extra(lambda: ops.etb_block_backward(g_c, g_r, c, r, w1, b1, w2, s, False)) / 2**20
    res["P_all_samples_MiB"] = N * m * n * 4 / 2**20

    # Derived figures (targets of issue 3).
    res["tflops_fused_tf32"] = flops / res["fused_fwd_high_ms"] / 1e9
    res["tflops_fused_fp32"] = flops / res["fused_fwd_highest_ms"] / 1e9
    res["tflops_fused_bf16"] = flops / res["fused_fwd_medium_ms"] / 1e9
    res["tflops_bmm_tf32"] = flops / res["bmm_tf32_ms"] / 1e9
    res["tflops_bmm_fp32"] = flops / res["bmm_fp32_ms"] / 1e9
    res["ratio_tf32_vs_bmm"] = res["bmm_tf32_ms"] / res["fused_fwd_high_ms"]
    res["ratio_fp32_vs_bmm"] = res["bmm_fp32_ms"] / res["fused_fwd_highest_ms"]
    set_precision("highest")
    return res


def verdicts(res):
    ok = lambda b: "PASS" if b else "FAIL"  # noqa: E731
    v = {
        "tf32 >= 60% of bmm": ok(res["ratio_tf32_vs_bmm"] >= 0.6),
        "fp32 >= 60% of bmm": ok(res["ratio_fp32_vs_bmm"] >= 0.6),
        "faster than chunked cuBLAS": ok(res["fused_fwd_high_ms"] < res["chunked_cublas_tf32_ms"]
                                         and res["fused_fwd_highest_ms"] < res["chunked_cublas_fp32_ms"]),
        "bwd <= 3.5x fwd": ok(res["bwd_over_fwd_high"] <= 3.5 and res["bwd_over_fwd_highest"] <= 3.5),
        "fwd extra mem << N m n": ok(max(res["fwd_peak_extra_MiB"], 0) < res["P_all_samples_MiB"] / 8),
        "bwd extra mem <= chunk budget + O(N(n+h+m))": ok(
            res["bwd_peak_extra_MiB"] <= int(os.environ.get("ETBK_CUDA_BWD_BUDGET_MB", "512")) + 64
            + 64 * res["shape"][0] * sum(res["shape"][1:]) / 2**20),
    }
    if res.get("naive_ref_tf32_ms") is not None:
        v["faster than naive ref"] = ok(res["fused_fwd_high_ms"] < res["naive_ref_tf32_ms"]
                                        and res["fused_fwd_highest_ms"] < res["naive_ref_fp32_ms"])
    return v


def variant_verdicts(res):
    """The targets the variants address, as they would read with each variant as the default."""
    if "fused_fwd_highest_triton_ms" not in res:
        return {}
    ok = lambda b: "PASS" if b else "FAIL"  # noqa: E731
    fp32 = res["fused_fwd_highest_triton_ms"]
    v = {"fp32 (Triton exact) >= 60% of bmm": ok(res["bmm_fp32_ms"] / fp32 >= 0.6),
         "fp32 (Triton exact) faster than chunked cuBLAS": ok(fp32 < res["chunked_cublas_fp32_ms"])}
    if res.get("naive_ref_fp32_ms") is not None:
        v["fp32 (Triton exact) faster than naive ref"] = ok(fp32 < res["naive_ref_fp32_ms"])
    for name in ("dual", "waves", "dual_waves"):
        v[f"tf32 bwd ({name}) <= 3.5x fwd"] = ok(res[f"bwd_over_fwd_high_{name}"] <= 3.5)
    return v


def markdown(meta, results):
    lines = [f"# etbkernels CUDA benchmark: {meta['device']}", "",
             f"torch {meta['torch']}, CUDA {meta['cuda']}, {meta['time']}; ms = median CUDA-event time; "
             "all-ones mask (2 N m n h flops) unless noted. TF32 / BF16 kernel: "
             f"{results[0].get('tc_kernel', '?') if results else '?'} (mma.sync columns: ETBK_CUDA_TC=mma).", ""]
    hdr = ("| N,n,h,m | fused tf32 ms (TF/s) | bmm tf32 ms | ratio | fused fp32 ms (TF/s) | bmm fp32 ms | ratio "
           "| fused bf16 ms | chunked tf32/fp32 ms | naive tf32/fp32 ms | natural mask (act) tf32 ms | bwd tf32/fp32 ms "
           "| bwd/fwd tf32/fp32 | peak extra fwd/bwd MiB (P: MiB) | mma.sync tf32/bf16 fwd ms, tf32 bwd ms | bf16 bwd ms (bwd/fwd) |")
    lines += [hdr, "|" + "---|" * (hdr.count("|") - 1)]
    f = lambda x, d=2: "n/a" if x is None else f"{x:.{d}f}"  # noqa: E731
    for r in results:
        lines.append(
            f"| {','.join(map(str, r['shape']))} | {f(r['fused_fwd_high_ms'])} ({f(r['tflops_fused_tf32'], 0)}) "
            f"| {f(r['bmm_tf32_ms'])} | {f(r['ratio_tf32_vs_bmm'])} "
            f"| {f(r['fused_fwd_highest_ms'])} ({f(r['tflops_fused_fp32'], 1)}) | {f(r['bmm_fp32_ms'])} "
            f"| {f(r['ratio_fp32_vs_bmm'])} | {f(r['fused_fwd_medium_ms'])} "
            f"| {f(r['chunked_cublas_tf32_ms'])}/{f(r['chunked_cublas_fp32_ms'])} "
            f"| {f(r.get('naive_ref_tf32_ms'))}/{f(r.get('naive_ref_fp32_ms'))} "
            f"| {f(r['fused_fwd_high_natural_mask_ms'])} ({f(r['active_fraction'])}) "
            f"| {f(r['bwd_high_ms'])}/{f(r['bwd_highest_ms'])} | {f(r['bwd_over_fwd_high'])}/{f(r['bwd_over_fwd_highest'])} "
            f"| {f(r['fwd_peak_extra_MiB'], 0)}/{f(r['bwd_peak_extra_MiB'], 0)} ({f(r['P_all_samples_MiB'], 0)}) "
            f"| {f(r['fused_fwd_high_mma_ms'])}/{f(r['fused_fwd_medium_mma_ms'])}, {f(r['bwd_high_mma_ms'])} "
            f"| {f(r['bwd_medium_ms'])} ({f(r['bwd_over_fwd_medium'])}) |")
    lines += ["", "Targets (issue 3):", ""] + verdict_lines(results, verdicts)
    if results and "fused_fwd_highest_triton_ms" in results[0]:
        hdr = ("| N,n,h,m | fp32 fwd ms: FFMA kernel / Triton exact | Triton exact vs bmm fp32 | chunked / naive fp32 ms "
               "| TF32 bwd ms (bwd/fwd): default | T both layouts | wave splits | both |")
        lines += ["", "Variants, not the default yet (bench_cuda.VARIANTS):", "", hdr, "|" + "---|" * (hdr.count("|") - 1)]
        for r in results:
            bw = lambda k: f"{f(r[f'bwd_high{k}_ms'])} ({f(r[f'bwd_over_fwd_high{k}'])})"  # noqa: E731
            lines.append(
                f"| {','.join(map(str, r['shape']))} | {f(r['fused_fwd_highest_ms'])} / {f(r['fused_fwd_highest_triton_ms'])} "
                f"| {f(r['bmm_fp32_ms'] / r['fused_fwd_highest_triton_ms'])} "
                f"| {f(r['chunked_cublas_fp32_ms'])} / {f(r.get('naive_ref_fp32_ms'))} "
                f"| {bw('')} | {bw('_dual')} | {bw('_waves')} | {bw('_dual_waves')} |")
        lines += ["", "Targets with each variant as the default:", ""] + verdict_lines(results, variant_verdicts)
    return "\n".join(lines) + "\n"


def verdict_lines(results, judge) -> list:
    """One "- shape: target: PASS; ..." line per result."""
    return [f"- {','.join(map(str, r['shape']))}: " + "; ".join(f"{k}: {x}" for k, x in judge(r).items())
            for r in results]


def main(argv=None) -> int:
    ap = bench_parser(__doc__, "bench.bench_cuda")
    ap.add_argument("--shapes", default=None, help="N,n,h,m;... (default 256,784,1024,1024;256,3072,1024,1024; "
                                                   "--quick: 16,256,256,256)")
    ap.add_argument("--reps", type=int, default=None, help="default 10 (--quick: 3)")
    ap.add_argument("--no-naive", action="store_true")
    args = parse_bench_args(ap, argv)
    if not (torch.cuda.is_available() and etbkernels.has_cuda_kernels()):
        print("bench_cuda: needs a GPU and a CUDA build of etbkernels", file=sys.stderr)
        return 2
    shapes = args.shapes or ("16,256,256,256" if args.quick else "256,784,1024,1024;256,3072,1024,1024")
    reps = args.reps or (3 if args.quick else 10)
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "time": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    results = []
    for spec in shapes.split(";"):
        N, n, h, m = (int(x) for x in spec.split(","))
        print(f"bench_cuda: shape {N},{n},{h},{m} ...", flush=True)
        results.append(bench_shape(N, n, h, m, reps, do_naive=not args.no_naive))
        torch.cuda.empty_cache()
    write_results(args, f"gpu_{device_tag(meta['device'])}", {"meta": meta, "results": results},
                  markdown(meta, results).splitlines())
    return 0


if __name__ == "__main__":
    sys.exit(main())
