"""pytest-benchmark view of the block ops (the full table comes from ``python -m bench.bench_block``).

    .venv/bin/python -m pytest bench/test_pytest_benchmark.py --benchmark-only \
        --benchmark-json bench/results/pytest_benchmark.json

Compare within one run: the same-flops matmul is the baseline for both ops.
"""
import pytest
import torch

import etbkernels as E
from etbkernels.testing import random_block

SHAPES = [(64, 784, 256, 256), (256, 784, 256, 10)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("method", ["etb_block", "ibp_block", "same_flops_matmul"])
def test_block_speed(benchmark, shape, method):
    N, n, h, m = shape
    blk = random_block(N, n, h, m, dtype=torch.float32, eps=0.02)
    if method == "same_flops_matmul":
        a, b, c = torch.randn(N * m, h), torch.randn(h, n), torch.empty(N * m, n)
        benchmark(torch.mm, a, b, out=c)
    else:
        out = benchmark(getattr(E, method), *blk.args())
        assert out.lower.shape == (N, m)
