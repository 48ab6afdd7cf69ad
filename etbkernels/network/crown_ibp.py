"""CROWN-IBP: sound bounds of the output (or of spec rows) by a backward linear relaxation.

IBP gives every ReLU's pre-activation interval [l, u]; the output is then bounded by pulling its
rows back through the network (Zhang et al., "Towards Stable and Efficient Training of Verifiably
Robust Neural Networks", ICLR 2020), replacing each ReLU by a linear bound that holds on [l, u]:

    a_l z  <=  relu(z)  <=  a_u z + c_u,
    active (l >= 0): a_l = a_u = 1, c_u = 0;   inactive (u <= 0): all 0;
    unstable: a_u = u / (u - l), c_u = -u l / (u - l), a_l = 1 if u >= -l else 0 (CROWN's choice).

For an upper bound a row's positive coefficients take the upper line and its negative ones the
lower line; a lower bound of row c is minus the upper bound of -c. At the input the linear
function ``lam x + bias`` is bounded over the box: ``lam mu + |lam| r + bias``. The pull-back
is the same as ETB's ``mask="ibp"`` one (:func:`.pullback.pull_back_stage`), with 2K rows.

Sound up to floating-point rounding, like IBP: these bounds may be called verified.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .pullback import channels_last_like_rows, output_rows, pull_back_stage, row_group
from .graph_ops import relu_relaxation
from .parse import Network


def signed_unit_rows(start: int, rows: int, size: int, dtype, device) -> Tensor:
    """(2 rows, size): the unit rows ``e_start .. e_(start + rows - 1)``, then their negatives
    (pulled back, their upper bounds are the neurons' upper bounds and minus their lower ones)."""
    eye = torch.zeros(rows, size, dtype=dtype, device=device)
    eye[torch.arange(rows), torch.arange(start, start + rows)] = 1
    return torch.cat([eye, -eye])


def stage_offset(stage, dtype, device) -> Tensor:
    """The affine stage at zero, ``A_k(0)`` (per-sample shape): the bias it adds, whatever its ops."""
    z = torch.zeros((1,) + tuple(stage[0].in_shape), dtype=dtype, device=device)
    for op in stage:
        z = op.forward(z)
    return z[0]


def crown_backward(net: Network, mu: Tensor, r: Tensor, pre: Sequence[Tuple[Tensor, Tensor]],
                   spec: Optional[Tensor] = None, images_per_call: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """Backward CROWN bounds of the output (or ``spec @ output``) of a chunk of samples.

    Args:
        mu, r: (N, *in_shape) box centre and radius (r >= 0).
        pre: one ``(lower, upper)`` pair (N, *stage shape) per ReLU: sound pre-activation bounds
            (IBP's in CROWN-IBP; CROWN forward's in ``method="crown-forward"``).
        spec: optional (N, K, out) or (K, out).
        images_per_call: rows per transposed convolution, as in ETB's pull-back (:func:`.pullback.row_group`).

    Returns:
        (lower, upper), each (N, K).
    """
    N = mu.shape[0]
    rows = output_rows(net, N, mu.dtype, mu.device, spec)
    K = rows.shape[1]
    if K == 0:
        return rows.new_zeros(N, 0), rows.new_zeros(N, 0)
    lam = torch.cat([rows, -rows], dim=1)
    relax = [relaxation_terms(lo, up) for lo, up in pre]
    offsets = [stage_offset(st, mu.dtype, mu.device) for st in net.stages]
    group = row_group(net, N, 2 * K, images_per_call)
    upper = torch.cat([upper_bounds(net, lam[:, g:g + group], relax, offsets, mu, r)
                       for g in range(0, 2 * K, group)], dim=1)
    return -upper[:, K:], upper[:, :K]


def relaxation_terms(lower: Tensor, upper: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """What :func:`upper_bounds` needs of one ReLU's relaxation on ``[lower, upper]``: the lower
    slope, the extra slope of positive coefficients (``a_u - a_l``) and the offset, in the layout
    of rows pulled back to that ReLU."""
    a_l, a_u, c_u = relu_relaxation(lower, upper)
    return tuple(channels_last_like_rows(t) for t in (a_l, a_u - a_l, c_u))


def upper_bounds(net: Network, lam: Tensor, relax: List[Tuple[Tensor, Tensor, Tensor]], offsets: List[Tensor],
                 mu: Tensor, r: Tensor) -> Tensor:
    """Upper bounds of the rows ``lam`` (N, K, *out_shape) of the network's output over the box;
    ``relax``: :func:`relaxation_terms` of each ReLU; ``offsets``: :func:`stage_offset` of each stage."""
    bias = lam.new_zeros(lam.shape[:2])
    # without a graph the relaxation goes in place once lam is a tensor made here (see _pull_back)
    owned, inplace = False, not torch.is_grad_enabled()
    for k in range(len(net.stages) - 1, -1, -1):
        bias = bias + neuron_dot(lam, offsets[k])
        lam, new = pull_back_stage(net.stages[k], lam)
        owned = owned or new
        if k > 0:
            a_l, d, c_u = relax[k - 1]
            pos = lam.clamp(min=0)
            bias = bias + neuron_dot(pos, c_u)
            # pos a_u + neg a_l = lam a_l + pos (a_u - a_l)
            a_l, d = a_l.unsqueeze(1), d.unsqueeze(1)
            lam = lam.mul_(a_l).addcmul_(pos, d) if inplace and owned else torch.addcmul(lam * a_l, pos, d)
    return neuron_dot(lam, mu) + neuron_dot(lam.abs(), r) + bias


def neuron_dot(lam: Tensor, v: Tensor) -> Tensor:
    """``sum_i lam[n, k, i] v[n, i]`` over the neurons i: (N, K). ``v``: (N, *shape), or (*shape)
    shared by all samples.

    Rows pulled back through a convolution are channels-last; they are contracted in that order,
    so no copy of ``lam`` is made."""
    N, K = lam.shape[:2]
    shared = v.dim() == lam.dim() - 2
    if lam.dim() == 5 and lam.permute(0, 1, 3, 4, 2).is_contiguous():
        lam = lam.permute(0, 1, 3, 4, 2)
        v = v.permute(1, 2, 0) if shared else v.permute(0, 2, 3, 1)
    n = math.prod(lam.shape[2:])  # not -1: an empty batch has none
    lam = lam.reshape(N, K, n)
    if shared:
        return lam @ v.reshape(n)
    return torch.bmm(lam, v.reshape(N, n, 1)).squeeze(-1)

