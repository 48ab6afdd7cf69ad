"""A float64 reference of ETB on any traced model, from the model's own torch operations.

The model's fx graph is interpreted with each ReLU replaced by a fixed 0/1 mask and each max-pool by
a fixed choice per window; the Jacobian of that masked model at a node, taken with
``torch.func.jacrev`` (the dense matrix of the whole graph up to that node), gives the radius
``|J| r``. The choices are made in graph order from the upper ends of each nonlinear node's input:
ETB's own (centre + radius, ``mask="etb"``) or given ones (IBP's, ``mask="ibp"``). None of the
library's bound operators is used: only the traced graph's node order and torch's functions.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from etbkernels.network.trace import trace

_RELU_FUNCS = {F.relu, torch.relu}


def _kind(gm: fx.GraphModule, node: fx.Node) -> Optional[str]:
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        if isinstance(mod, nn.ReLU):
            return "relu"
        if isinstance(mod, nn.MaxPool2d):
            return "maxpool"
    if node.op == "call_function" and node.target in _RELU_FUNCS or node.op == "call_method" and node.target == "relu":
        return "relu"
    if node.op == "call_function" and node.target is F.max_pool2d:
        return "maxpool"
    return None


def _pool_args(gm, node):
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        return m.kernel_size, m.stride, m.padding
    a = list(node.args) + [None] * 4
    kernel = a[1] if a[1] is not None else node.kwargs["kernel_size"]
    stride = a[2] if a[2] is not None else node.kwargs.get("stride") or kernel
    return kernel, stride, a[3] if a[3] is not None else node.kwargs.get("padding", 0)


class _Masked(fx.Interpreter):
    """Runs the graph with the given choices at nonlinear nodes; records every node's value."""

    def __init__(self, gm, choices: Dict[str, torch.Tensor], stop: Optional[str] = None):
        super().__init__(gm)
        self.choices, self.stop, self.vals = choices, stop, {}

    def run_node(self, n):
        if n.name in self.choices:
            x = self.env[n.args[0]]
            c = self.choices[n.name]
            if _kind(self.module, n) == "relu":
                v = x * c
            else:
                N, C = x.shape[:2]
                v = x.reshape(N, C, -1).gather(2, c.reshape(N, C, -1)).reshape(c.shape)
        else:
            v = super().run_node(n)
        self.vals[n.name] = v
        return v


def etb_reference(model: nn.Module, mu: torch.Tensor, r: torch.Tensor, center_at: str,
                  upper_ends: Optional[List[torch.Tensor]] = None):
    """(center, radius) of the output, and [(center, radius)] of each nonlinear node's input, in order.

    ``upper_ends``: one tensor per nonlinear node (its input's shape) to choose from (mask="ibp");
    None: ETB's own (mask="etb")."""
    gm = fx.GraphModule(model, trace(model, mu).graph)
    nonlin = [n for n in gm.graph.nodes if _kind(gm, n)]
    out_node = [n for n in gm.graph.nodes if n.op == "output"][0].args[0]
    choices: Dict[str, torch.Tensor] = {}
    pre = []

    def value_at(node, x, masked, b):
        interp = _Masked(gm, {k: v[b:b + 1] for k, v in choices.items()} if masked else {})
        interp.run(x)
        return interp.vals[node.name]

    def center_radius(node):
        N = mu.shape[0]
        centres, radii = [], []
        for b in range(N):
            xb = mu[b:b + 1]
            J = torch.func.jacrev(lambda x: value_at(node, x, True, b))(xb)  # (1, *shape, 1, *in)
            shape = value_at(node, xb, True, b).shape[1:]
            Jm = J.reshape(shape.numel(), -1)
            radii.append((Jm.abs() @ r[b].reshape(-1)).reshape(shape))
            centres.append(value_at(node, xb, center_at == "linear", b)[0])
        return torch.stack(centres), torch.stack(radii)

    for k, node in enumerate(nonlin):
        c, q = center_radius(node.args[0])
        pre.append((c, q))
        up = upper_ends[k] if upper_ends is not None else c + q
        if _kind(gm, node) == "relu":
            choices[node.name] = (up > 0).to(mu.dtype)
        else:
            kernel, stride, padding = _pool_args(gm, node)
            choices[node.name] = F.max_pool2d(up, kernel, stride, padding, return_indices=True)[1]
    return center_radius(out_node), pre
