"""Pure-PyTorch reference implementations of every op (float64 capable, differentiable).

These follow docs/math.md formula by formula and favour clarity over memory: the ETB
reference materializes P_n = W2 S_n W1 for every sample (N x m x n numbers). The tests compare
the fused kernels with them, and the benchmarks use them as the naive baseline.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .bounds_type import Bounds


class _RoundedMatmul(torch.autograd.Function):
    """``a @ b`` with both operands rounded by ``rnd``, and the gradient rounded before each of the
    backward's two products: what a matmul unit that rounds its inputs (TF32, BF16) does in the
    forward and in the backward, with the accumulation in the inputs' dtype."""

    @staticmethod
    def forward(ctx, a, b, rnd):
        ra, rb = rnd(a), rnd(b)
        ctx.save_for_backward(ra, rb)
        ctx.rnd = rnd
        return ra @ rb

    @staticmethod
    def backward(ctx, g):
        ra, rb = ctx.saved_tensors
        rg = ctx.rnd(g)
        return (rg @ rb.mT).sum_to_size(ra.shape), (ra.mT @ rg).sum_to_size(rb.shape), None


def _matmul(a: Tensor, b: Tensor, rnd: Optional[Callable[[Tensor], Tensor]]) -> Tensor:
    return a @ b if rnd is None else _RoundedMatmul.apply(a, b, rnd)


def _affine(x: Tensor, w: Tensor, b: Optional[Tensor], rnd: Optional[Callable[[Tensor], Tensor]] = None) -> Tensor:
    y = _matmul(x, w.T, rnd)
    return y if b is None else y + b


def etb_mask_ref(center: Tensor, radius: Tensor, w1: Tensor, b1: Optional[Tensor]) -> Tensor:
    """s = 1[c1 + |W1| r > 0]: the ReLUs whose IBP upper bound is positive (0/1, input dtype).

    A NaN upper bound counts as active, so NaN inputs give NaN bounds instead of being dropped.
    """
    c1 = _affine(center, w1, b1)
    return (~(c1 + radius @ w1.abs().T <= 0)).to(center.dtype)


def etb_block_ref(center: Tensor, radius: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor,
                  b2: Optional[Tensor] = None, mask: Optional[Tensor] = None, center_at: str = "linear",
                  round_operands: Optional[Callable[[Tensor], Tensor]] = None) -> Bounds:
    """ETB bound of ``W2 relu(W1 x + b1) + b2`` over the box ``center +- radius`` (both (N, n)).

    Materializes P = W2 S W1 per sample: memory N * m * (n + h). ``center_at="linear"`` centres the
    interval on the linearization W2 S c1 + b2, ``"output"`` on the network's output W2 relu(c1) + b2.
    ``round_operands`` (e.g. ``etbkernels.testing.matmul_operand_rounding("medium")``) rounds the
    operands of every product, forward and backward, as a matmul unit at a lower float32 precision
    may: the reference for what a kernel may legally return at that precision (the mask is computed
    unrounded; pass the kernel's own).
    """
    c1 = _affine(center, w1, b1, round_operands)
    s = etb_mask_ref(center, radius, w1, b1) if mask is None else mask.to(center.dtype)
    act = torch.relu(c1) if center_at == "output" else s * c1
    out_center = _affine(act, w2, b2, round_operands)
    P = _matmul(w2 * s[:, None, :], w1, round_operands)  # (N, m, n)
    out_radius = (P.abs() * radius[:, None, :]).sum(-1)
    return Bounds.from_center_radius(out_center, out_radius)


def ibp_block_ref(center: Tensor, radius: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor,
                  b2: Optional[Tensor] = None) -> Bounds:
    """IBP bound of ``W2 relu(W1 x + b1) + b2`` over the box ``center +- radius`` (sound)."""
    c1, r1 = _affine(center, w1, b1), radius @ w1.abs().T
    up, lo = torch.relu(c1 + r1), torch.relu(c1 - r1)
    return Bounds.from_center_radius(_affine((up + lo) / 2, w2, b2), ((up - lo) / 2) @ w2.abs().T)


def block_forward_ref(x: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor, b2: Optional[Tensor] = None) -> Tensor:
    """The block itself, g(x) = W2 relu(W1 x + b1) + b2, for sampling points of the box."""
    return _affine(torch.relu(_affine(x, w1, b1)), w2, b2)
