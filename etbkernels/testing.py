"""Shared helpers for the test suite and benchmarks: dtype/device grids, tolerances, random blocks.

Kept in the package (not in tests/) so downstream projects can test their own use of the ops
against the same grids.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

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


def round_bf16(x: Tensor) -> Tensor:
    """Values rounded to bfloat16 (8-bit significand, round to nearest even), kept in x's dtype."""
    return x.to(torch.bfloat16).to(x.dtype)


#: The float32 matmul precisions and the coarsest operand rounding torch allows at each, on any
#: device: "high" permits TF32 (CUDA; CPUs with AMX run a TF32-like mode), "medium" permits bfloat16
#: (CPUs with AMX or AVX512-BF16 honour it; most other CPUs ignore the setting).
MATMUL_PRECISIONS = ("highest", "high", "medium")


def matmul_operand_rounding(precision: Optional[str] = None) -> Callable[[Tensor], Tensor]:
    """The rounding of float32 matmul operands that ``torch.set_float32_matmul_precision(precision)``
    allows (default: the current setting), whether or not this machine uses it. Keeps the dtype, so
    a float64 reference can apply it and still accumulate exactly
    (``reference.etb_block_ref(..., round_operands=...)``)."""
    precision = precision or torch.get_float32_matmul_precision()
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_operand_rounding: precision must be one of {MATMUL_PRECISIONS}, got {precision!r}")
    if precision == "highest":
        return lambda t: t
    if precision == "high":
        return lambda t: round_tf32(t).to(t.dtype)
    return round_bf16


def lowp_tolerance(lowp_ref: Tensor, ref64: Tensor, scale: float, base: float) -> float:
    """flash-attention's rule: a kernel at a lower precision may be off the float64 reference by twice
    the error of a reference computed at that precision (``lowp_ref``, e.g. ``etb_block_ref`` with
    ``round_operands``), plus ``base * scale`` (its float32 error at full precision)."""
    err = (lowp_ref.double() - ref64.double()).abs().max().item() if ref64.numel() else 0.0
    return 2.0 * err + base * scale


class _EmulatedMatmulPrecision(TorchDispatchMode):
    """Rounds the operands of every float32 CPU matmul (also those the etbkernels ops issue from C++)."""

    _MATMULS = ("mm", "addmm", "addmm_", "bmm", "baddbmm", "baddbmm_", "addbmm", "addbmm_")

    def __init__(self, rnd):
        super().__init__()
        self.rnd, self.calls = rnd, 0

    def _round(self, t):
        return self.rnd(t) if isinstance(t, Tensor) and t.dtype == torch.float32 and t.device.type == "cpu" else t

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::")[-1]
        if func.namespace == "aten" and name in self._MATMULS:
            self.calls += 1
            lead = 1 if name.startswith(("addmm", "baddbmm", "addbmm")) else 0  # the added term is not a product operand
            args = tuple(a if i < lead else self._round(a) for i, a in enumerate(args[: lead + 2])) + tuple(args[lead + 2:])
            return func(*args, **kwargs)
        if func.namespace == "etbkernels":
            # run the op's CPU kernel with this mode active, so the products it issues come back here
            with self:
                return func.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args, **kwargs)
        return func(*args, **kwargs)


@contextmanager
def emulate_matmul_precision(precision: str) -> Iterator[_EmulatedMatmulPrecision]:
    """Makes this CPU compute float32 matmuls as a CPU that honours ``precision`` would (bf16 operands
    under "medium", as on CPUs with AMX): the operands of every float32 CPU matmul, including those
    inside the etbkernels ops, are rounded by ``matmul_operand_rounding(precision)``; accumulation
    stays float32. Tests use it so that their tolerances are checked against what torch may do on
    any CPU, not only on the one they run on. Runs single-threaded (the ops' worker threads would
    not see the mode); the yielded object counts the matmuls it rounded in ``.calls``."""
    mode = _EmulatedMatmulPrecision(matmul_operand_rounding(precision))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with mode:
            yield mode
    finally:
        torch.set_num_threads(threads)


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
