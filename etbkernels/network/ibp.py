"""Interval Bound Propagation through a parsed network (the sound baseline)."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from ..bounds_type import Bounds
from .graph_ops import relu_interval
from .layers import LinearOp
from .parse import Network


def apply_spec_center_radius(spec: Tensor, center: Tensor, radius: Tensor):
    """Sound bounds of ``spec @ y`` for y in ``center +- radius`` (spec (N, K, m) or (K, m))."""
    if spec.dim() == 2:
        return center @ spec.T, radius @ spec.abs().T
    return torch.einsum("nkm,nm->nk", spec, center), torch.einsum("nkm,nm->nk", spec.abs(), radius)


def ibp_stages(net: Network, center: Tensor, radius: Tensor, spec: Optional[Tensor] = None) -> List[Bounds]:
    """IBP bounds of every stage's output: the pre-activation of each ReLU, then the network output.

    ``center``/``radius``: (N, *in_shape). With ``spec`` (N, K, out) or (K, out), the last entry
    bounds ``spec @ output``; the spec is folded into the last Linear layer when there is one
    (``|C W| r`` instead of ``|C| |W| r``). Each bound is sound up to floating-point rounding.
    """
    out: List[Bounds] = []
    c, r = center, radius
    for k, stage in enumerate(net.stages):
        if k > 0:  # ReLU on both ends of the previous interval
            c, r = relu_interval(c, r)
        c, r = ibp_stage(stage, c, r, spec if k == len(net.stages) - 1 else None)
        out.append(Bounds.from_center_radius(c, r))
    return out


def ibp_stage(ops, c: Tensor, r: Tensor, spec: Optional[Tensor] = None):
    """IBP (centre, radius) through one stage's ops; ``spec`` (for the last stage) is folded into a
    final Linear, else applied to the output's interval (flattened)."""
    for i, op in enumerate(ops):
        if spec is not None and i == len(ops) - 1 and op.dense_weight() is not None:
            return _linear_with_spec(op, spec, c, r)
        c, r = op.forward(c), op.abs_linear(r)
    if spec is not None:
        c, r = apply_spec_center_radius(spec, c.flatten(1), r.flatten(1))
    return c, r


def _linear_with_spec(op: LinearOp, spec: Tensor, c: Tensor, r: Tensor):
    if spec.dim() == 2:
        w = spec @ op.weight
        b = None if op.bias is None else spec @ op.bias
        center = c @ w.T if b is None else c @ w.T + b
        return center, r @ w.abs().T
    w = torch.matmul(spec, op.weight)  # (N, K, n)
    center = torch.einsum("nkj,nj->nk", w, c)
    if op.bias is not None:
        center = center + spec @ op.bias
    return center, torch.einsum("nkj,nj->nk", w.abs(), r)
