"""The block forward against the fraction of active hidden units: which kernels skip inactive
units (bench/gpu_check.sh runs it; ``--device cpu`` runs the CPU kernel the same way).

``torch.ops.etbkernels.etb_block`` with a given 0/1 mask whose active fraction is 1, 0.5, 0.25
and 0.1 (random units per sample), at (N, n, h, m) = (256, 784, 1024, 1024), (256, 3072, 1024,
1024) and the medium CNN's dense block (256, 1024, 512, 512). On CUDA, per precision path:

- ``tf32`` / ``bf16``: the default tensor-core kernel (Triton ``wgmma`` where Triton is installed).
  It applies the mask as a select on its tiles: inactive units still cost their flops, so its
  time should not fall with the fraction;
- ``tf32_mma`` / ``bf16_mma``: the hand-written ``mma.sync`` kernel (``ETBK_CUDA_TC=mma``), which
  compacts each sample's active units first (``compact_active``) and multiplies only those: the
  mask-aware TF32 forward;
- ``fp32``: the exact-fp32 FFMA kernel, which also walks the compacted active units.

On a CPU the kernel multiplies only the active units too (``cpu``). Every variant is timed in
one interleaved run per shape and fraction (CUDA events on a GPU); the table gives ms, the time
relative to the same variant at fraction 1 (ideal: the fraction), and the largest relative
difference of the radius from the fp32 (CPU: float64) result. Writes
``masked_fwd_gpu_<device>.{json,md}`` (``masked_fwd_gpu_cpu`` with ``--device cpu``).

    python -m bench run masked_fwd_gpu                   # python -m bench.gpu_masked_fwd (GPU)
    python -m bench.gpu_masked_fwd --device cpu --quick  # the code paths on a CPU
"""
from __future__ import annotations

import sys

import torch

import etbkernels
from etbkernels import ops

from .bench_cuda import env
from .gpu_network import device_name, result_tag
from .harness import interleaved_medians, parse_bench_args, write_results
from .harness.results import bench_parser

SHAPES = "256,784,1024,1024;256,3072,1024,1024;256,1024,512,512"
FRACTIONS = (1.0, 0.5, 0.25, 0.1)
# variant: (float32 matmul precision, environment)
CUDA_VARIANTS = {
    "tf32": ("high", {}),
    "tf32_mma": ("high", {"ETBK_CUDA_TC": "mma"}),
    "bf16": ("medium", {}),
    "bf16_mma": ("medium", {"ETBK_CUDA_TC": "mma"}),
    "fp32": ("highest", {}),
}
CPU_VARIANTS = {"cpu": ("highest", {})}


def call(args, precision: str, variables: dict):
    """One forward of etb_block under a precision and environment (restored afterwards)."""
    def fn():
        old = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(precision)
        try:
            with env(variables):
                return ops.etb_block(*args, False)[1]
        finally:
            torch.set_float32_matmul_precision(old)
    return fn


def bench_shape(N, n, h, m, device, variants, repeats, warmup):
    g = torch.Generator().manual_seed(0)
    c = torch.randn(N, n, generator=g).to(device)
    r = (torch.rand(N, n, generator=g) * 0.05).to(device)
    w1 = (torch.randn(h, n, generator=g) / n ** 0.5).to(device)
    b1 = (torch.randn(h, generator=g) * 0.1).to(device)
    w2 = (torch.randn(m, h, generator=g) / h ** 0.5).to(device)
    b2 = (torch.randn(m, generator=g) * 0.1).to(device)
    rows = []
    for frac in FRACTIONS:
        mask = (torch.rand(N, h, generator=g) < frac).float().to(device) if frac < 1 else torch.ones(N, h, device=device)
        args = (c, r, w1, b1, w2, b2, mask)
        if device.startswith("cuda"):
            ref = call(args, "highest", {})()
        else:  # the float64 kernel
            ref = ops.etb_block(*(t.double() for t in args), False)[1].float()
        fns = {k: call(args, p, e) for k, (p, e) in variants.items()}
        err = {}
        for k, f in fns.items():
            out = f()
            err[k] = ((out - ref).abs().max() / ref.abs().max().clamp(min=1e-30)).item()
        t = interleaved_medians(fns, repeats, warmup=warmup, device=device)
        rows.append({"shape": [N, n, h, m], "fraction": frac, "active": round(mask.mean().item(), 4),
                     **{f"{k}_ms": round(1e3 * v["median_s"], 4) for k, v in t.items()},
                     **{f"{k}_rel_err": float(f"{e:.3g}") for k, e in err.items()}})
        print(rows[-1], flush=True)
    for row in rows:  # time relative to the same variant with every unit active
        full = next(x for x in rows if x["shape"] == row["shape"] and x["fraction"] == 1.0)
        for k in variants:
            row[f"{k}_over_all_active"] = round(row[f"{k}_ms"] / full[f"{k}_ms"], 3)
    return rows


def main(argv=None) -> int:
    ap = bench_parser(__doc__, "bench.gpu_masked_fwd")
    ap.add_argument("--device", default="cuda", help="torch device (default cuda; cpu runs the CPU kernel)")
    ap.add_argument("--shapes", default=None, help=f"N,n,h,m;... (default {SHAPES}; --quick: 8,64,128,32)")
    ap.add_argument("--repeats", type=int, default=None, help="default 10 (--quick: 1)")
    args = parse_bench_args(ap, argv)
    device = args.device
    cuda = device.startswith("cuda")
    if cuda and not (torch.cuda.is_available() and etbkernels.has_cuda_kernels()):
        print("gpu_masked_fwd: --device cuda needs a GPU and a CUDA build of etbkernels", file=sys.stderr)
        return 2
    variants = CUDA_VARIANTS if cuda else CPU_VARIANTS
    repeats = args.repeats or (1 if args.quick else 10)
    rows = []
    for spec in (args.shapes or ("8,64,128,32" if args.quick else SHAPES)).split(";"):
        N, n, h, m = (int(v) for v in spec.split(","))
        rows += bench_shape(N, n, h, m, device, variants, repeats, 2 if cuda else 1)
        if cuda:
            torch.cuda.empty_cache()
    dev = device_name(device)
    tc = ("triton" if etbkernels.has_triton_kernels() else "mma.sync") if cuda else "-"
    meta = {"device": dev, "torch_device": device, "repeats": repeats, "variants": {k: v[0] for k, v in variants.items()},
            "default_tensor_core_kernel": tc}
    lines = [f"# Block forward against the active fraction on {dev} (generated by bench/gpu_masked_fwd.py)", "",
             f"etb_block forward, given random masks; median ms of {repeats} interleaved rounds"
             f"{' (CUDA events)' if cuda else ''}; (x) = time / the same variant at fraction 1 (a kernel that skips "
             f"inactive units approaches the fraction); err = max |radius - reference| / max |radius|, the reference "
             f"being the {'exact-fp32 kernel' if cuda else 'float64 kernel'}."
             + (f" Default TF32/BF16 kernel: {tc}; *_mma: ETBK_CUDA_TC=mma (compacts active units)." if cuda else ""),
             "", "| N,n,h,m | fraction (active) | " + " | ".join(variants) + " |", "|---|---|" + "---|" * len(variants)]
    for row in rows:
        cells = [f"{row[f'{k}_ms']:.3f} ({row[f'{k}_over_all_active']:.2f}), err {row[f'{k}_rel_err']:.1e}" for k in variants]
        lines.append(f"| {','.join(map(str, row['shape']))} | {row['fraction']} ({row['active']:.2f}) | "
                     + " | ".join(cells) + " |")
    write_results(args, f"masked_fwd_gpu_{result_tag(device)}", {"meta": meta, "rows": rows}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
