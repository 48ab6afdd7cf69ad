"""Pure-PyTorch reference implementations of every op (float64 capable, differentiable).

These follow ../shared/ETB.md formula by formula and favour clarity over memory: the ETB
reference materializes P_n = W2 S_n W1 for every sample (N x m x n numbers). The tests compare
the fused kernels with them, and the benchmarks use them as the naive baseline.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .bounds_type import Bounds


def _affine(x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    return x @ w.T if b is None else x @ w.T + b


def etb_mask_ref(center: Tensor, radius: Tensor, w1: Tensor, b1: Optional[Tensor]) -> Tensor:
    """s = 1[c1 + |W1| r > 0]: the ReLUs whose IBP upper bound is positive (0/1, input dtype).

    A NaN upper bound counts as active, so NaN inputs give NaN bounds instead of being dropped.
    """
    c1 = _affine(center, w1, b1)
    return (~(c1 + radius @ w1.abs().T <= 0)).to(center.dtype)


def etb_block_ref(center: Tensor, radius: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor,
                  b2: Optional[Tensor] = None, mask: Optional[Tensor] = None, center_at: str = "linear") -> Bounds:
    """ETB bound of ``W2 relu(W1 x + b1) + b2`` over the box ``center +- radius`` (both (N, n)).

    Materializes P = W2 S W1 per sample: memory N * m * (n + h). ``center_at="linear"`` centres the
    interval on the linearization W2 S c1 + b2, ``"output"`` on the network's output W2 relu(c1) + b2.
    """
    c1 = _affine(center, w1, b1)
    s = etb_mask_ref(center, radius, w1, b1) if mask is None else mask.to(center.dtype)
    act = torch.relu(c1) if center_at == "output" else s * c1
    out_center = _affine(act, w2, b2)
    P = (w2 * s[:, None, :]) @ w1  # (N, m, n)
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
