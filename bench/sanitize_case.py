"""A small case for compute-sanitizer (memcheck / racecheck / initcheck), run by bench/gpu_check.sh.

Every CUDA kernel variant of etbkernels runs at least once: the three float32 paths (FFMA,
TF32, BF16; the last two on Triton's kernels where registered and on the mma.sync kernel) with the 16-byte (sizes multiple of 4) and the 4-byte (awkward sizes) loaders, the
float64 kernel (both loaders), samples without active units, the chunked backward (a tiny
memory budget makes several chunks) and IBP. Checks the results against float64 references
too, so a sanitizer-clean but wrong run still fails.
"""
import os
import sys

import torch

import etbkernels
from etbkernels import ops

os.environ.setdefault("ETBK_CUDA_BWD_BUDGET_MB", "1")


def run(N, n, h, m, dtype, path, zero_rows=False):
    torch.manual_seed(N * 1000 + n)
    dev = "cuda"
    c = torch.randn(N, n, device=dev, dtype=dtype)
    r = torch.rand(N, n, device=dev, dtype=dtype) * 0.3
    w1 = torch.randn(h, n, device=dev, dtype=dtype) / n ** 0.5
    b1 = torch.randn(h, device=dev, dtype=dtype) * 0.1
    w2 = torch.randn(m, h, device=dev, dtype=dtype) / h ** 0.5
    b2 = torch.randn(m, device=dev, dtype=dtype) * 0.1
    mask = None
    if zero_rows:
        mask = (torch.rand(N, h, device=dev) < 0.5).to(dtype)
        mask[0] = 0
    torch.set_float32_matmul_precision(path)
    oc, orad, s = ops.etb_block(c, r, w1, b1, w2, b2, mask, False)
    g_c, g_r = torch.randn_like(oc), torch.randn_like(orad)
    grads = ops.etb_block_backward(g_c, g_r, c, r, w1, b1, w2, s, False)
    torch.cuda.synchronize()
    P = (w2.double() * s.double()[:, None, :]) @ w1.double()
    ref = (P.abs() * r.double()[:, None, :]).sum(-1)
    err = (orad.double() - ref).abs().max().item() / (ref.abs().max().item() + 1e-12)
    tol = {torch.float64: 1e-12, "highest": 1e-5, "high": 5e-3, "medium": 3e-2}
    t = tol[torch.float64] if dtype == torch.float64 else tol[path]
    ok = err <= t and all(torch.isfinite(g).all().item() for g in grads)
    print(f"  N={N} n={n} h={h} m={m} {str(dtype)[6:]} {path:8s} rel err {err:.2e} {'ok' if ok else 'FAIL'}")
    return ok


def main():
    assert torch.cuda.is_available() and etbkernels.has_cuda_kernels()
    ok = True
    for path in ("highest", "high", "medium"):
        ok &= run(5, 37, 19, 130, torch.float32, path)            # 4-byte loader, 2 row tiles
        ok &= run(3, 132, 40, 132, torch.float32, path, True)     # 16-byte loader, an empty sample
    # TF32 / BF16 above ran the Triton kernels where registered; the mma.sync kernel too:
    os.environ["ETBK_CUDA_TC"] = "mma"
    for path in ("high", "medium"):
        ok &= run(5, 37, 19, 130, torch.float32, path)
        ok &= run(3, 132, 40, 132, torch.float32, path, True)
    os.environ.pop("ETBK_CUDA_TC")
    ok &= run(4, 33, 21, 70, torch.float64, "highest", True)      # fp64, 8-byte loader
    ok &= run(2, 66, 17, 66, torch.float64, "highest")            # fp64, 16-byte loader
    ib = ops.ibp_block(*(torch.randn(3, 9, device="cuda"), torch.rand(3, 9, device="cuda"),
                         torch.randn(5, 9, device="cuda"), None, torch.randn(4, 5, device="cuda"), None))
    torch.cuda.synchronize()
    ok &= bool(torch.isfinite(ib[0]).all() and (ib[1] >= 0).all())
    print("sanitize_case:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
