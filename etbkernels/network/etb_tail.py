"""ETB's trailing dense layers without their full Jacobians (``mask="etb"``, output bounds only).

:func:`.etb.etb_forward` forms ``J_k`` for every layer, because every layer's mask
``s_k = 1[center_k + radius_k > 0]`` needs its radius. For the output alone much of that is
waste in the trailing run of Linear layers (the fully connected head of a CNN, the hidden
layers of an MLP):

- a neuron with ``center_k > 0`` is active whatever its radius (radius >= 0);
- a neuron whose cheap upper bound ``center_k + ub_k`` is <= 0 is inactive, with
  ``ub_k = |W_k| (s_{k-1} ub_{k-1})`` (the triangle inequality, as in IBP, started from the
  exact radii of the last formed layer and tightened by every exact radius computed since);
- only the remaining, undecided neurons need ``radius_k = |row_k J| r``.

So from the base (the last layer whose directions ``D = J diag(r)`` :func:`.etb.etb_forward`
formed) on, each hidden layer pulls back only its undecided rows to the base
(``rows W_k S_{k-1} W_{k-1} ... W_t``) and contracts them with ``D``; the output pulls back its
K rows. The masks, hence the bounds, are the ones the full forward pass gives (a neuron within
rounding of the threshold may go either way in both). The cost drops from
``n h_k h_{k-1}`` per sample and hidden layer to about ``R_k (h_{k-1} + n) h_base`` for ``R_k``
undecided rows (``bench/lazy_tail.py`` measures the whole effect).
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .layers import LinearOp
from .parse import Network

#: Relative slack on the cheap upper bound, so that rounding (ub and the exact radius are summed
#: in different orders) never decides a neuron the full computation would have left undecided.
UB_SLACK = 1e-3


def _linear_of(stage, k: int) -> Optional[LinearOp]:
    """The stage's Linear layer if the stage is one Linear (stage 0 may flatten its input first)."""
    if len(stage) == 1 and stage[0].dense_weight() is not None:
        return stage[0]
    if k == 0 and len(stage) == 2 and stage[0].is_flatten and stage[1].dense_weight() is not None:
        return stage[1]
    return None


def _lazy_cost(h: List[int], n: int, t: int, t0: int, K: int) -> float:
    """Multiply-adds per sample of the trailing Linear stages t0 .. L-1 (widths ``h[k]``,
    ``h[t0 - 1]`` their input, n directions) when stages t0 .. t-1 are formed forward and the rest
    lazily, assuming half of each hidden layer undecided; ``t = len(h)`` is the full forward pass."""
    L = len(h)
    width = lambda k: h[k - 1] if k > 0 else n  # noqa: E731
    # stage 0's directions are its weights scaled by r: n * h[0], not a product
    cost = sum(n * h[k] * (width(k) if k > 0 else 1) for k in range(t0, min(t, L - 1)))
    if t >= L - 1:
        return cost + K * width(L - 1) * n
    base = width(t) if t > 0 else 1  # the input's directions are diag(r): a row costs n
    pulled = 0  # multiply-adds to pull one row of stage k back to the base
    for k in range(t, L):
        rows = K if k == L - 1 else (0 if k == t == 0 else h[k] / 2)
        cost += rows * (pulled + base * n)
        pulled += h[k] * width(k) if k < L - 1 else 0
    return cost


def tail_start(net: Network, K: int) -> Optional[int]:
    """Where :func:`lazy_tail` takes over: the stage t (in the trailing run of one-Linear stages)
    whose estimated cost (:func:`_lazy_cost`) is least, or None when the full forward pass is
    cheaper (or there is no hidden layer in the trailing run, or ``net.options.lazy_tail`` is False)."""
    if not net.options.lazy_tail:
        return None
    L = len(net.stages)
    t0 = L
    while t0 > 0 and _linear_of(net.stages[t0 - 1], t0 - 1) is not None:
        t0 -= 1
    if t0 > L - 2:
        return None
    h = [math.prod(st[-1].out_shape) for st in net.stages]
    n = math.prod(net.in_shape)
    costs = {t: _lazy_cost(h, n, t, t0, K) for t in range(t0, L - 1)}
    best = min(costs, key=costs.get)
    return best if costs[best] < _lazy_cost(h, n, L, t0, K) else None


def _pull_back_to_base(weights: List[Tensor], masks: List[Tensor], rows: Tensor) -> Tensor:
    """Rows (N, R, h) on the input side of a tail stage, pulled back through ``masks[j]`` and
    ``weights[j]`` of the tail stages before it (last first): (N, R, h_base)."""
    for W, s in zip(reversed(weights), reversed(masks)):
        rows = torch.matmul(rows * s.unsqueeze(1), W)
    return rows


def radius_of_rows(D: Optional[Tensor], rows: Tensor, r: Tensor) -> Tensor:
    """``sum over directions |rows D^T|`` for rows (N, R, h_base): (N, R). D (N, n, h_base) is the
    base's directions; None: the base is the input, whose directions are ``diag(r)``."""
    if D is None:
        return torch.matmul(rows.abs(), r.reshape(r.shape[0], rows.shape[2], 1)).squeeze(-1)
    return _RowsRadius.apply(D, rows)


class _RowsRadius(torch.autograd.Function):
    """``|rows D^T|`` summed over the n directions, as the wide product ``rows @ D^T`` (R x n per
    sample), with a backward that keeps every product wide. Autograd of ``(D @ rows^T).abs().sum(1)``
    formed ``D^T @ grad`` (h x n times n x R, R = 10 outputs), which ran at about 6% of the matmul
    rate: 3% of the medium CNN's training step in a profile (batch 256, 1 thread)."""

    @staticmethod
    def forward(ctx, D, rows):
        y = torch.matmul(rows, D.transpose(1, 2))  # (N, R, n)
        ctx.save_for_backward(D, rows, y)
        return y.abs().sum(2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        D, rows, y = ctx.saved_tensors
        gy = y.sign() * grad.unsqueeze(2)  # not in place: a retained graph may run backward again
        gD = torch.matmul(gy.transpose(1, 2), rows) if ctx.needs_input_grad[0] else None
        g_rows = torch.matmul(gy, D) if ctx.needs_input_grad[1] else None
        return gD, g_rows


def _undecided(z: Tensor, ub: Tensor) -> Tensor:
    return (z <= 0) & (z + ub * (1 + UB_SLACK) > 0)


def lazy_tail(net: Network, t: int, D: Optional[Tensor], rad: Optional[Tensor], z: Tensor, r: Tensor,
              next_activation, record: Optional[List[Tensor]] = None) -> Tuple[Tensor, Tensor]:
    """The output centre and the output's rows pulled back to the base, forming only the hidden
    rows the masks need.

    Args:
        t: :func:`tail_start`; stages t .. L-1 are one Linear each.
        D: (N, n, h_base) directions ``J_{t-1} diag(r)`` of stage t-1's output, masked; None when
            t = 0 (the base is the input itself).
        rad: (N, h_base) the base's exact radius, masked (t = 0: r).
        z: (N, h_base) stage t-1's activation, the centre fed to stage t (t = 0: the input).
        r: (N, *in_shape) the input radius.
        next_activation: ``(z, s) -> activation`` (the centring rule of :func:`.etb.etb_forward`).
        record: the masks of the stages before t (``record[k]``: stage k's ReLU); the tail's are
            appended, or, when the list already holds them, replayed without deciding (rad unused).

    Returns:
        (center (N, out), rows (N, out, h_base)), with ``J_L diag(r) = rows D^T``: see
        :func:`radius_of_rows`.
    """
    N = z.shape[0]
    L = len(net.stages)
    weights: List[Tensor] = []
    masks: List[Tensor] = []
    replay = record is not None and len(record) > t
    ub = None if replay else rad.detach()
    for k in range(t, L - 1):
        op = _linear_of(net.stages[k], k)
        W = op.weight
        z = op.forward(z)
        if replay:
            s = record[k]
        else:
            s, ub = _tail_mask(op, k, t, z.detach(), ub, D, r, weights, masks)
            if record is not None:
                record.append(s)
        weights.append(W)
        masks.append(s)
        z = next_activation(z, s)
    last = _linear_of(net.stages[L - 1], L - 1)
    rows = _pull_back_to_base(weights, masks, last.weight.expand(N, -1, -1))
    return last.forward(z), rows


def _tail_mask(op, k: int, t: int, z: Tensor, ub: Tensor, D, r: Tensor, weights, masks) -> Tuple[Tensor, Tensor]:
    """Stage k's mask in the lazy tail (see :func:`lazy_tail`) from its pre-activation z, and the
    cheap bound ub carried to stage k (masked; tightened by the exact radii computed)."""
    with torch.no_grad():  # the masks carry no gradient
        ub = op.abs_linear(ub)  # the incoming ub is already masked
        if D is None and k == t:  # |W_1| r is the first layer's exact radius
            s = (z + ub > 0).to(z.dtype)
        else:
            W = op.weight
            s = _decide(z, ub, lambda idx: radius_of_rows(D, _pull_back_to_base(weights, masks, W[idx]), r))
        return s, ub.mul_(s)


def _decide(z: Tensor, ub: Tensor, exact_radius) -> Tensor:
    """The mask ``1[z + radius > 0]`` from the cheap bound ub, computing ``exact_radius(idx)`` only for
    the rows idx (N, R) it leaves undecided; ub is tightened in place with the exact radii."""
    need = _undecided(z, ub)
    s = (z > 0).to(z.dtype)
    R = int(need.sum(1).max()) if z.shape[0] else 0
    if R:
        idx = torch.sort(need.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :R]
        exact = exact_radius(idx)
        need_rows, ub_rows = need.gather(1, idx), ub.gather(1, idx)
        s.scatter_(1, idx, torch.where(need_rows, (z.gather(1, idx) + exact > 0).to(z.dtype), s.gather(1, idx)))
        ub.scatter_(1, idx, torch.where(need_rows, torch.minimum(exact, ub_rows), ub_rows))
    return s
