"""ETB propagation through a parsed network, for one chunk of samples (see ../shared/ETB.md).

Two ways to form the per-sample linear parts ``J_k`` of the masked prefixes:

- :func:`etb_forward` (every layer's bound; needed for ``mask="etb"``): pushes the ``n`` input
  directions ``diag(r)`` forward, ``D_k = A_k S_{k-1} D_{k-1}`` (a batch of N*n "images" through
  each Linear/Conv2d), so ``radius_k = sum over directions |D_k|``. Cost ~ n forward passes per
  sample; memory N * n * (widest layer).
- :func:`etb_backward` (the output / spec rows only, masks known, e.g. ``mask="ibp"``): pulls
  the K rows of ``C`` backward, ``Lambda <- Lambda A_k S_{k-1}`` (Linear transposes and
  conv_transpose2d on N*K images). Cost ~ K backward passes; memory N * K * (widest layer).

Both are plain differentiable PyTorch; the caller chunks samples to bound memory.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .layers import LinearOp
from .parse import Network

CR = Tuple[Tensor, Tensor]  # (center, radius)


def _apply_directions(op, D: Tensor, fn: str) -> Tensor:
    """Applies ``op.<fn>`` to a (N, n, *in_shape) batch of directions."""
    N, n = D.shape[0], D.shape[1]
    out = getattr(op, fn)(D.reshape((N * n,) + tuple(op.in_shape)))
    return out.reshape((N, n) + tuple(op.out_shape))


def first_stage_directions(net: Network, dtype, device) -> Tensor:
    """``A_1`` applied to the identity: (n, *shape of stage 1), shared by all samples."""
    n = 1
    for s in net.in_shape:
        n *= s
    D = torch.eye(n, dtype=dtype, device=device).reshape((n,) + tuple(net.in_shape))
    for op in net.stages[0]:
        D = op.linear(D)
    return D


def _next_activation(z: Tensor, s: Tensor, center_at: str) -> Tensor:
    return s * z if center_at == "linear" else torch.relu(z)


def etb_forward(net: Network, mu: Tensor, r: Tensor, first: Tensor, center_at: str,
                masks: Optional[Sequence[Tensor]] = None, spec: Optional[Tensor] = None) -> List[CR]:
    """ETB bounds of every stage output for a chunk of samples, forming ``J_k`` forward.

    Args:
        mu, r: (N, *in_shape) box centre and radius (r >= 0).
        first: :func:`first_stage_directions` of ``net``.
        center_at: "linear" (T_k(mu)) or "output" (the network's own f_k(mu)).
        masks: one 0/1 tensor (N, *stage shape) per ReLU, or None for ETB's own masks
            ``1[center_k + radius_k > 0]`` (the blockwise scheme).
        spec: optional (N, K, out) or (K, out) matrix applied to the output.

    Returns:
        [(center_k, radius_k)] for k = 1..L (the last one is the output or ``spec @ output``).
    """
    N = mu.shape[0]
    n = first.shape[0]
    # D[b, k] = r_b[k] * J_1 e_k: the columns of J_1 diag(r_b)
    D = first.unsqueeze(0) * r.reshape((N, n) + (1,) * (first.dim() - 1))
    z = mu
    for op in net.stages[0]:
        z = op.forward(z)
    out: List[CR] = []
    for k in range(1, len(net.stages)):
        radius = torch.linalg.vector_norm(D, ord=1, dim=1)
        out.append((z, radius))
        s = (z + radius > 0).to(z.dtype).detach() if masks is None else masks[k - 1]
        D = D * s.unsqueeze(1)
        z = _next_activation(z, s, center_at)
        for op in net.stages[k]:
            D = _apply_directions(op, D, "linear")
            z = op.forward(z)
    if spec is not None:
        D, z = D.flatten(2), z.flatten(1)
        if spec.dim() == 2:
            D, z = D @ spec.T, z @ spec.T
        else:
            D, z = torch.einsum("nim,nkm->nik", D, spec), torch.einsum("nm,nkm->nk", z, spec)
    out.append((z, torch.linalg.vector_norm(D, ord=1, dim=1)))
    return out


def output_center(net: Network, mu: Tensor, center_at: str, masks: Sequence[Tensor]) -> Tensor:
    """Centre of the output: the masked linearization T_L(mu) or the network's f(mu)."""
    z = mu
    for k, stage in enumerate(net.stages):
        if k > 0:
            z = _next_activation(z, masks[k - 1], center_at)
        for op in stage:
            z = op.forward(z)
    return z


def etb_backward(net: Network, mu: Tensor, r: Tensor, center_at: str, masks: Sequence[Tensor],
                 spec: Optional[Tensor] = None) -> CR:
    """ETB bounds of the output (or ``spec @ output``) with given masks, forming ``J_L`` backward.

    Args:
        mu, r: (N, *in_shape) box centre and radius.
        masks: one 0/1 tensor (N, *stage shape) per ReLU (e.g. from IBP: ``mask="ibp"``).
        spec: optional (N, K, out) or (K, out).

    Returns:
        (center, radius), each (N, K) (K = out features, or spec rows).
    """
    N = mu.shape[0]
    z = output_center(net, mu, center_at, masks).flatten(1)
    out_dim = z.shape[1]
    if spec is None:
        lam = torch.eye(out_dim, dtype=mu.dtype, device=mu.device).expand(N, out_dim, out_dim)
    elif spec.dim() == 2:
        lam = spec.expand(N, -1, -1)
        z = z @ spec.T
    else:
        lam = spec
        z = torch.einsum("nm,nkm->nk", z, spec)
    K = lam.shape[1]
    lam = lam.reshape((N, K) + tuple(net.out_shape))
    for k in range(len(net.stages) - 1, -1, -1):
        for i, op in enumerate(reversed(net.stages[k])):
            if i == 0 and isinstance(op, LinearOp) and lam.dim() == 3:
                lam = torch.matmul(lam, op.weight)  # (N, K, out) @ (out, in)
            else:
                lam = op.transpose(lam.reshape((N * K,) + tuple(op.out_shape)))
                lam = lam.reshape((N, K) + tuple(op.in_shape))
        if k > 0:
            lam = lam * masks[k - 1].unsqueeze(1)
    radius = torch.einsum("nki,ni->nk", lam.abs().flatten(2), r.flatten(1))
    return z, radius
