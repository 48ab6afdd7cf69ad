"""Operators a traced graph has beyond the chain's affine layers (:mod:`.layers`): ReLU and max-pool
(the two nonlinear ones), the sum and difference of two branches, and concatenation.

Each class holds every rule the graph walkers (:mod:`.dag`) need, so a walker never asks for an
op's type:

- affine ops (``affine = True``): ``forward(*x)`` with bias, ``linear(*d)``, ``abs_linear(*r)``
  (``|W| r``) and ``transpose_inputs(y)`` (``W_i^T y`` per input);
- nonlinear ops (``affine = False``):
  ``ibp(c, r)``: the interval of the output;
  ``choose(upper)``: ETB's choice from the inputs' upper ends (the ReLU mask ``1[u > 0]``; for a
  max, the argmax of the upper ends, which is the same rule, ReLU being ``max(x, 0)``);
  ``etb(z, D, choice, center_at)``: the centre and directions through that choice;
  ``crown_back(A_lo, A_up, l, u)``: CROWN's linear relaxation on ``[l, u]`` applied to rows that
  bound the output from below and from above;
  ``crown_fwd(M, Delta, m, delta, l, u)``: the same relaxation applied to forward linear bounds.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .layers import AffineOp, Shape


def relu_relaxation(lower: Tensor, upper: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``(a_l, a_u, c_u)`` with ``a_l z <= relu(z) <= a_u z + c_u`` for every z in [lower, upper].

    Differentiable in the bounds through ``a_u`` and ``c_u``; ``a_l`` is a 0/1 choice (no gradient).
    """
    active = (lower >= 0).to(lower.dtype)
    unstable = (lower < 0) & (upper > 0)
    width = torch.where(unstable, upper - lower, torch.ones_like(upper))  # > 0 where used
    a_u = torch.where(unstable, upper / width, active)
    c_u = torch.where(unstable, -upper * lower / width, torch.zeros_like(upper))
    a_l = torch.where(unstable, (upper >= -lower).to(lower.dtype), active).detach()
    return a_l, a_u, c_u


def relu_interval(c: Tensor, r: Tensor) -> Tuple[Tensor, Tensor]:
    """(centre, radius) of ReLU applied to both ends of ``c +- r``."""
    up, lo = torch.relu(c + r), torch.relu(c - r)
    return (up + lo) / 2, (up - lo) / 2


class AddOp(AffineOp):
    """``x_0 + sign * x_1`` of two branches of the same shape (a residual connection, or a difference)."""

    def __init__(self, shape: Shape, sign: float = 1.0):
        self.in_shape = self.out_shape = tuple(shape)
        self.sign = sign

    @property
    def in_shapes(self):
        return [self.in_shape, self.in_shape]

    def forward(self, a, b):
        return a + b if self.sign > 0 else a - b

    linear = forward

    def abs_linear(self, a, b):
        return a + b

    def transpose_inputs(self, y):
        return [y, y if self.sign > 0 else -y]


class CatOp(AffineOp):
    """``torch.cat`` of several branches along per-sample dimension ``dim``."""

    def __init__(self, shapes: Sequence[Shape], dim: int):
        self.shapes, self.dim = [tuple(s) for s in shapes], dim
        out = list(self.shapes[0])
        out[dim] = sum(s[dim] for s in self.shapes)
        self.in_shape, self.out_shape = self.shapes[0], tuple(out)

    @property
    def in_shapes(self):
        return list(self.shapes)

    def forward(self, *xs):
        return torch.cat(xs, dim=self.dim + 1)

    linear = forward
    abs_linear = forward

    def transpose_inputs(self, y):
        return list(torch.split(y, [s[self.dim] for s in self.shapes], dim=self.dim + 1))


class ReluOp:
    """``relu(x)``."""

    affine = False
    takes_mask = True  # ETB's choice is a 0/1 mask of its input's shape (a user may give one)

    def __init__(self, shape: Shape):
        self.in_shape = self.out_shape = tuple(shape)
        self.in_shapes = [self.in_shape]

    def ibp(self, c: Tensor, r: Tensor) -> Tuple[Tensor, Tensor]:
        return relu_interval(c, r)

    def choose(self, upper: Tensor) -> Tensor:
        return (upper > 0).to(upper.dtype).detach()

    def etb(self, z: Tensor, D: Tensor, s: Tensor, center_at: str) -> Tuple[Tensor, Tensor]:
        z = s * z if center_at == "linear" else torch.relu(z)
        return z, D * s.unsqueeze(1)

    def crown_back(self, A_lo: Tensor, A_up: Tensor, lower: Tensor, upper: Tensor):
        """Rows (N, K, *shape) through the relaxation: (rows on the input, bias (N, K)) for each."""
        a_l, a_u, c_u = (t.unsqueeze(1) for t in relu_relaxation(lower, upper))
        lo_pos, lo_neg = A_lo.clamp(min=0), A_lo.clamp(max=0)
        up_pos, up_neg = A_up.clamp(min=0), A_up.clamp(max=0)
        new_lo = lo_pos * a_l + lo_neg * a_u
        new_up = up_pos * a_u + up_neg * a_l
        return new_lo, (lo_neg * c_u).flatten(2).sum(-1), new_up, (up_pos * c_u).flatten(2).sum(-1)

    def crown_fwd(self, L: Tensor, U: Tensor, lb: Tensor, ub: Tensor, lower: Tensor, upper: Tensor):
        """Forward linear bounds ``L x + lb <= z <= U x + ub`` (directions (N, n, *shape)) through the relaxation."""
        a_l, a_u, c_u = relu_relaxation(lower, upper)
        return L * a_l.unsqueeze(1), U * a_u.unsqueeze(1), lb * a_l, ub * a_u + c_u


class MaxPoolOp:
    """``max_pool2d`` (floor mode, dilation 1): the maximum over each window.

    ETB takes, in each window, the input whose upper end is largest (ReLU's rule: relu(x) = max(x, 0)
    keeps x when its upper end exceeds 0). CROWN's relaxation: below by that same input x_j (any
    input of the window is below the max); above by x_j where l_j is at least every other input's
    upper end (then the max is x_j), else by the constant largest upper end. Both are sound."""

    affine = False
    takes_mask = False  # ETB's choice is an index per window, not a mask

    def __init__(self, kernel, stride, padding, in_shape: Shape):
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.in_shape = tuple(in_shape)
        self.in_shapes = [self.in_shape]
        C, H, W = in_shape
        size = [(d + 2 * p - k) // s + 1 for d, k, s, p in zip((H, W), kernel, stride, padding)]
        self.out_shape = (C, size[0], size[1])

    def _pool(self, x: Tensor, indices: bool = False):
        return F.max_pool2d(x, self.kernel, self.stride, self.padding, return_indices=indices)

    def ibp(self, c: Tensor, r: Tensor) -> Tuple[Tensor, Tensor]:
        up, lo = self._pool(c + r), self._pool(c - r)
        return (up + lo) / 2, (up - lo) / 2

    def choose(self, upper: Tensor) -> Tensor:
        return self._pool(upper.detach(), indices=True)[1]  # (N, C, Ho, Wo): flat H*W positions

    def _gather(self, t: Tensor, idx: Tensor) -> Tensor:
        """``t`` (N, B, C, H, W) at the window choices ``idx`` (N, C, Ho, Wo): (N, B, C, Ho, Wo)."""
        N, B, C = t.shape[0], t.shape[1], t.shape[2]
        flat = t.reshape(N, B, C, -1)
        i = idx.reshape(N, 1, C, -1).expand(N, B, C, idx.shape[-2] * idx.shape[-1])
        return flat.gather(3, i).reshape((N, B) + self.out_shape)

    def _scatter(self, rows: Tensor, idx: Tensor) -> Tensor:
        """Adjoint of :meth:`_gather`: rows (N, K, C, Ho, Wo) onto the input positions (N, K, C, H, W)."""
        N, K, C = rows.shape[0], rows.shape[1], rows.shape[2]
        out = rows.new_zeros((N, K, C, self.in_shape[1] * self.in_shape[2]))
        i = idx.reshape(N, 1, C, -1).expand(N, K, C, idx.shape[-2] * idx.shape[-1])
        return out.scatter_add(3, i, rows.reshape(N, K, C, -1)).reshape((N, K) + self.in_shape)

    def etb(self, z: Tensor, D: Tensor, idx: Tensor, center_at: str) -> Tuple[Tensor, Tensor]:
        zc = self._pool(z) if center_at == "output" else self._gather(z.unsqueeze(1), idx)[:, 0]
        return zc, self._gather(D, idx)

    def _windows(self, t: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, k*k, windows): each window's inputs, padding as -inf (never the max)."""
        N, C, H, W = t.shape
        (ph, pw), (kh, kw) = self.padding, self.kernel
        tp = F.pad(t, (pw, pw, ph, ph), value=float("-inf"))
        cols = F.unfold(tp.reshape(N * C, 1, H + 2 * ph, W + 2 * pw), (kh, kw), stride=self.stride)
        return cols.reshape(N, C, kh * kw, -1)

    def _relaxation(self, lower: Tensor, upper: Tensor):
        """(idx, exact, top), each (N, C, Ho, Wo): per window the input j with the largest lower end (its
        flat H*W position), whether l_j is at least every other input's upper end (then max = x_j), and
        the largest upper end. Windows may overlap, so each is read on its own (unfold)."""
        N, C, H, W = lower.shape
        lw, uw = self._windows(lower.detach()), self._windows(upper)
        j = lw.argmax(2, keepdim=True)
        others = uw.detach().scatter(2, j, float("-inf")).amax(2)
        exact = lw.gather(2, j).squeeze(2) >= others
        top = uw.amax(2)
        pos = torch.arange(H * W, dtype=lower.dtype, device=lower.device).reshape(1, 1, H, W)
        idx = self._windows(pos).expand(N, C, -1, -1).gather(2, j).squeeze(2).long()
        return tuple(t.reshape((N,) + self.out_shape) for t in (idx, exact, top))

    def crown_back(self, A_lo: Tensor, A_up: Tensor, lower: Tensor, upper: Tensor):
        idx, exact, top = self._relaxation(lower, upper)
        ex = exact.unsqueeze(1).to(A_lo.dtype)
        topc = (top * (1 - exact.to(top.dtype))).unsqueeze(1)  # the constant where the upper line is one
        lo_pos, lo_neg = A_lo.clamp(min=0), A_lo.clamp(max=0)
        up_pos, up_neg = A_up.clamp(min=0), A_up.clamp(max=0)
        # lower rows: positive coefficients take the lower line x_j, negative ones the upper line
        new_lo = self._scatter(lo_pos + lo_neg * ex, idx)
        new_up = self._scatter(up_pos * ex + up_neg, idx)
        return new_lo, (lo_neg * topc).flatten(2).sum(-1), new_up, (up_pos * topc).flatten(2).sum(-1)

    def crown_fwd(self, L: Tensor, U: Tensor, lb: Tensor, ub: Tensor, lower: Tensor, upper: Tensor):
        idx, exact, top = self._relaxation(lower, upper)
        ex = exact.to(L.dtype)
        L2, lb2 = self._gather(L, idx), self._gather(lb.unsqueeze(1), idx)[:, 0]
        U2, ub2 = self._gather(U, idx) * ex.unsqueeze(1), self._gather(ub.unsqueeze(1), idx)[:, 0] * ex
        return L2, U2, lb2, ub2 + top * (1 - ex)
