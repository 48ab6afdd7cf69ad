"""Shared helpers for the test suite and benchmarks: dtype/device grids, tolerances, random blocks.

Kept in the package (not in tests/) so downstream projects can test their own use of the ops
against the same grids.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import Tensor

from ._ops import has_cuda_kernels

#: Float dtypes the compiled ops take directly.
KERNEL_DTYPES = (torch.float32, torch.float64)
#: Low-precision dtypes the Python wrappers accept (computed in float32).
LOW_PRECISION_DTYPES = (torch.float16, torch.bfloat16)
#: (rtol, atol) for kernel vs reference in the same dtype. The ETB radius sums n * h products
#: per entry, so float32 agrees to ~1e-5 relative, not to the last ulp.
TOLERANCES = {torch.float64: (1e-10, 1e-12), torch.float32: (2e-5, 1e-5)}


def round_tf32(x: Tensor) -> Tensor:
    """float32 -> TF32 values (10-bit mantissa), round to nearest, ties away from zero (as cvt.rna.tf32.f32
    and the CUDA build's TF32 operand rounding)."""
    i = x.float().contiguous().view(torch.int32)
    return ((i + 0x1000) & ~0x1FFF).view(torch.float32)


def devices() -> list:
    """Devices to test on: CPU, plus CUDA when a GPU and CUDA kernels are both present."""
    out = ["cpu"]
    if torch.cuda.is_available() and has_cuda_kernels():
        out.append("cuda")
    return out


@dataclass
class Block:
    """A random Affine-ReLU-Affine block and a batch of boxes for it."""

    center: Tensor
    radius: Tensor
    w1: Tensor
    b1: Optional[Tensor]
    w2: Tensor
    b2: Optional[Tensor]

    def args(self):
        """The positional arguments of ``etb_block`` / ``ibp_block``: (center, radius, w1, b1, w2, b2)."""
        return self.center, self.radius, self.w1, self.b1, self.w2, self.b2


def random_block(N: int, n: int, h: int, m: int, *, dtype=torch.float64, device="cpu", eps: float = 0.05,
                 bias: bool = True, seed: int = 0) -> Block:
    """Gaussian weights scaled like nn.Linear (std 1/sqrt(fan_in)), centres ~ N(0, 1), radius in [0, eps]."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype=dtype, device=device)

    radius = (torch.rand(N, n, generator=g, dtype=torch.float64) * eps).to(dtype=dtype, device=device)
    return Block(
        center=rnd(N, n),
        radius=radius,
        w1=rnd(h, n, scale=max(n, 1) ** -0.5),
        b1=rnd(h, scale=0.1) if bias else None,
        w2=rnd(m, h, scale=max(h, 1) ** -0.5),
        b2=rnd(m, scale=0.1) if bias else None,
    )


@contextmanager
def poisoned_buffers() -> Iterator[None]:
    """Within this context, the kernels fill every buffer they allocate with NaN before use."""
    old = os.environ.get("ETBK_POISON")
    os.environ["ETBK_POISON"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["ETBK_POISON"]
        else:
            os.environ["ETBK_POISON"] = old


def box_points(center: Tensor, radius: Tensor, count: int, *, vertices: bool = True, seed: int = 0) -> Tensor:
    """``count`` points of each box (N, n) -> (count, N, n): uniform samples, half of them vertices."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(count, *center.shape, generator=g, dtype=torch.float64) * 2 - 1
    if vertices:
        u[: count // 2] = torch.sign(u[: count // 2])
    return center + u.to(center.dtype) * radius
