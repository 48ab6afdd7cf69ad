"""Sound bounds of every layer by CROWN's forward mode: linear bounds in the input, pushed forward.

Every neuron z of stage k gets two linear functions of the input x that hold over the box,

    L_k x + l_k  <=  z  <=  U_k x + u_k,

formed forward like ETB's ``J_k`` (:func:`.etb.etb_forward`, with the same patches form for
convolutions), and its interval is their extremes over the box: ``U_k mu + u_k + |U_k| r`` and
``L_k mu + l_k - |L_k| r``. An affine map W sends them to ``W+ U + W- L`` (upper) and
``W+ L + W- U`` (lower); with ``M = (U + L) / 2`` and ``Delta = (U - L) / 2`` that is
``M' = W M`` and ``Delta' = |W| Delta``: two products per layer, like IBP's centre and radius
(the bias and the values at mu follow the same rule). A ReLU is replaced by CROWN's linear
bounds on the interval just computed (:func:`.graph_ops.relu_relaxation`): ``U <- a_u U`` (+ c_u),
``L <- a_l L``, row scalings like ETB's masks. This is the "forward" mode of linear relaxation
based perturbation analysis (Xu et al., NeurIPS 2020; auto_LiRPA's ``method="forward"``).
IBP runs alongside from the same intervals, and each interval is the intersection of the two
(both sound): on IBP-trained networks, whose IBP intervals are tight, the linear bounds alone
can be looser than IBP.

Sound up to floating-point rounding. Cost: about 3x ETB's ``mask="etb"`` path (two sets of
directions, and U, L formed from them at every ReLU; bench/bench_network.py), and the same
memory per set.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from . import patches
from .graph_ops import relu_relaxation
from .directions import abs_sum_directions, apply_directions, spec_directions, spec_values
from .etb import forward_step
from .graph_ops import relu_interval
from .ibp import ibp_stage
from .parse import Network


class _Directions:
    """``M`` and ``Delta`` (``Delta`` None while it is zero) of one chunk, in patches form or dense
    (N, n, *layer shape), scaled by r like ETB's directions."""

    def __init__(self, M, Delta=None):
        self.M, self.Delta = M, Delta

    @property
    def in_patches(self) -> bool:
        return isinstance(self.M, tuple)

    def upper_lower(self):
        """The coefficients ``(U, L)`` of the upper and lower linear bounds (the same object while
        ``Delta`` is zero)."""
        if self.Delta is None:
            return self.M, self.M
        if self.in_patches:
            (P, S, pad), Pd = self.M, self.Delta[0]
            return (P + Pd, S, pad), (P - Pd, S, pad)
        return self.M + self.Delta, self.M - self.Delta

    def radius(self, D, r: Tensor) -> Tensor:
        """``|D| r`` per neuron (layer layout) for D = U or L."""
        return patches.radius(D, r) if self.in_patches else abs_sum_directions(D)

    def relax(self, U, L, a_u: Tensor, a_l: Tensor) -> None:
        """From ``a_u U`` and ``a_l L`` (the rows of each neuron scaled): the new M and Delta."""
        a_u, a_l = a_u / 2, a_l / 2  # halved on the neurons, not on the directions
        if self.in_patches:
            (Pu, S, pad), (Pl, _, _) = patches.mask(U, a_u), patches.mask(L, a_l)
            self.M, self.Delta = (Pu + Pl, S, pad), (Pu - Pl, S, pad)
        else:
            U, L = U * a_u.unsqueeze(1), L * a_l.unsqueeze(1)
            self.M, self.Delta = U + L, U - L

    def to_dense(self, r: Tensor) -> None:
        self.M = patches.to_directions(self.M, r)
        if self.Delta is not None:
            self.Delta = patches.to_directions(self.Delta, r)

    def apply(self, op) -> None:
        if self.in_patches:
            self.M = patches.apply(self.M, op)
            if self.Delta is not None:
                self.Delta = patches.apply(self.Delta, op.abs_op())
        else:
            self.M = apply_directions(op, self.M, "linear")
            if self.Delta is not None:
                self.Delta = apply_directions(op.abs_op(), self.Delta, "linear")

    def flatten_linear(self, weight: Tensor, r: Tensor) -> None:
        self.M = patches.flatten_linear_directions(self.M, weight, r)
        if self.Delta is not None:
            self.Delta = patches.flatten_linear_directions(self.Delta, weight.abs(), r)

    def spec(self, C: Tensor) -> None:
        """Rows ``C`` (N, K, out) or (K, out) applied to the output's directions."""
        self.M = spec_directions(self.M.flatten(2), C)
        if self.Delta is not None:
            self.Delta = spec_directions(self.Delta.flatten(2), C.abs())


def crown_forward(net: Network, mu: Tensor, r: Tensor, first, spec: Optional[Tensor] = None) -> List[tuple]:
    """Sound (lower, upper) bounds of every stage output for a chunk of samples.

    Args:
        mu, r: (N, *in_shape) box centre and radius (r >= 0).
        first: :func:`.etb.first_stage_directions` of ``net``.
        spec: optional (N, K, out) or (K, out) matrix applied to the output.

    Returns:
        [(lower_k, upper_k)] for k = 1..L (the last one is the output or ``spec @ output``).
    """
    N = mu.shape[0]
    n = r.shape[1:].numel()
    if isinstance(first, tuple):
        dirs = _Directions(first)
    else:
        dirs = _Directions(first.unsqueeze(0) * r.reshape((N, n) + (1,) * (first.dim() - 1)))
    # the linear bounds' values at mu: cm = (u(mu) + l(mu)) / 2, cd = (u(mu) - l(mu)) / 2
    cm, cd = mu, None
    for op in net.stages[0]:
        cm = op.forward(cm)
    last = len(net.stages) - 1
    # IBP alongside, from the intersected intervals: cheap, and tighter where training made IBP tight
    ic, ir = ibp_stage(net.stages[0], mu, r, spec if last == 0 else None)
    out = []
    for k in range(1, len(net.stages)):
        U, L = dirs.upper_lower()
        vu, vl = (cm, cm) if cd is None else (cm + cd, cm - cd)  # the linear bounds at mu
        rad_u = dirs.radius(U, r)
        lower, upper = intersect(vl - (rad_u if L is U else dirs.radius(L, r)), vu + rad_u, ic - ir, ic + ir)
        out.append((lower, upper))
        ic, ir = ibp_stage(net.stages[k], *relu_interval((upper + lower) / 2, (upper - lower) / 2),
                           spec if k == last else None)
        a_l, a_u, c_u = relu_relaxation(lower, upper)
        dirs.relax(U, L, a_u, a_l)
        vu, vl = a_u * vu + c_u, a_l * vl
        cm, cd = (vu + vl) / 2, (vu - vl) / 2
        ops = net.stages[k]
        i = 0
        while i < len(ops):
            op, step = ops[i], forward_step(ops, i, dirs.M if dirs.in_patches else None, n)
            if step == "flatten_linear":
                dirs.flatten_linear(ops[i + 1].weight, r)
                cm, cd = ops[i + 1].forward(op.forward(cm)), ops[i + 1].abs_linear(op.forward(cd))
                i += 2
                continue
            if step == "densify":
                dirs.to_dense(r)
            dirs.apply(op)
            cm, cd = op.forward(cm), op.abs_linear(cd)
            i += 1
    if dirs.in_patches:
        dirs.to_dense(r)
    cm = cm.flatten(1)
    cd = None if cd is None else cd.flatten(1)
    if spec is not None:
        dirs.spec(spec)
        cm = spec_values(cm, spec)
        cd = None if cd is None else spec_values(cd, spec.abs())
    U, L = dirs.upper_lower()
    vu, vl = (cm, cm) if cd is None else (cm + cd, cm - cd)
    ic, ir = ic.flatten(1), ir.flatten(1)
    # radii come in layer shape where the output is a conv grid; the centres are flat here
    out.append(intersect(vl - dirs.radius(L, r).flatten(1), vu + dirs.radius(U, r).flatten(1), ic - ir, ic + ir))
    return out


def intersect(lower: Tensor, upper: Tensor, lower2: Tensor, upper2: Tensor):
    """``[lower, upper]`` intersected with ``[lower2, upper2]`` (both sound); rounding may cross the
    ends by an ulp where both are nearly exact: then the upper end is raised to the lower one."""
    lower, upper = torch.maximum(lower, lower2), torch.minimum(upper, upper2)
    return lower, torch.maximum(upper, lower)
