"""Jacobian directions pushed forward (ETB's and CROWN forward mode's dense form): ``D`` (N, n, *layer
shape), the n input directions of each sample scaled by its radius, and what the methods share of them."""
from __future__ import annotations

import torch
from torch import Tensor


def apply_directions(op, D: Tensor, fn: str) -> Tensor:
    """Applies ``op.<fn>`` to a (N, n, *in_shape) batch of directions."""
    N, n = D.shape[0], D.shape[1]
    D4 = D.reshape((N * n,) + tuple(op.in_shape))
    if op.channels_last and D4.dim() == 4:  # oneDNN convolutions are faster channels-last
        D4 = D4.contiguous(memory_format=torch.channels_last)
    out = getattr(op, fn)(D4)
    return out.reshape((N, n) + tuple(op.out_shape))


def abs_sum_directions(D: Tensor) -> Tensor:
    """``sum_i |D[:, i]|`` over the directions (dim 1): the radius. Not ``vector_norm(ord=1)``,
    which reduces a middle dimension 2-3x slower on CPU (bench/micro_network_ops.py)."""
    return D.abs().sum(1)


def spec_directions(D: Tensor, spec: Tensor) -> Tensor:
    """Directions (N, n, out) of the output mapped to spec rows: (N, n, K); spec (K, out) or (N, K, out)."""
    return D @ spec.T if spec.dim() == 2 else torch.einsum("nim,nkm->nik", D, spec)


def spec_values(z: Tensor, spec: Tensor) -> Tensor:
    """Output values (N, out) mapped to spec rows: (N, K)."""
    return z @ spec.T if spec.dim() == 2 else torch.einsum("nm,nkm->nk", z, spec)
