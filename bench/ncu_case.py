"""One fused ETB forward on the GPU, for a profiler: run under Nsight Compute by bench/gpu_check.sh.

Usage: python -m bench.ncu_case [--shape N,n,h,m] [--precision high|medium|highest]
Runs one warm-up and one profiled call of torch.ops.etbkernels.etb_block with an all-ones mask
(every hidden unit active, so the kernel does 2 N m n h flops).
"""
import argparse

import torch

import etbkernels  # noqa: F401  (registers the ops)
from etbkernels import ops


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="256,784,1024,1024")
    ap.add_argument("--precision", default="high")
    args = ap.parse_args()
    N, n, h, m = (int(x) for x in args.shape.split(","))
    torch.manual_seed(0)
    c, r = torch.randn(N, n, device="cuda"), torch.rand(N, n, device="cuda") * 0.05
    w1, w2 = torch.randn(h, n, device="cuda") / n ** 0.5, torch.randn(m, h, device="cuda") / h ** 0.5
    ones = torch.ones(N, h, device="cuda")
    torch.set_float32_matmul_precision(args.precision)
    for _ in range(2):
        ops.etb_block(c, r, w1, None, w2, None, ones, False)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
