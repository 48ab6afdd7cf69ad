"""Lowers a traced graph that is a chain into affine stages separated by ReLUs.

A network ``A_L relu ... relu A_1`` becomes ``stages = [ops of A_1, ..., ops of A_L]``: each
stage is a short list of :mod:`~etbkernels.network.layers` ops whose composition is the affine
map between two ReLUs. Per-channel affine layers (eval BatchNorm, input normalization, scalar
scales and shifts) are folded into the Linear/Conv2d just before them (exact), and a per-feature
affine map right before a Linear is folded into it; AvgPool2d stays an op of its own (it is
already affine). The chain methods (:mod:`.ibp`, :mod:`.etb`, :mod:`.crown_ibp`, ...) run on this form;
graphs with branches or max-pool go to the graph walkers (:mod:`.dag`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch
from torch import nn

from .build import Graph, build_graph
from .graph_ops import ReluOp
from .layers import AffineOp, ChannelAffineOp, ConvOp, LinearOp, Shape
from .options import BoundsOptions


@dataclass
class Network:
    """A parsed network: ``stages[k]`` is the affine map before the k-th ReLU (the last one ends it)."""

    in_shape: Shape
    stages: List[List[AffineOp]] = field(default_factory=list)
    relu_first: bool = False  # the model starts with a ReLU (applied to the input box)
    relu_last: bool = False   # the model ends with a ReLU (applied to the output bounds)
    options: BoundsOptions = field(default_factory=BoundsOptions)  # how (not what) the methods compute

    @property
    def out_shape(self) -> Shape:
        return self.stages[-1][-1].out_shape

    def stage_shapes(self) -> List[Shape]:
        """Per-sample output shape of each stage (the pre-activations; the last is the output)."""
        return [st[-1].out_shape for st in self.stages]


def _fold_after(prev: AffineOp, ca: ChannelAffineOp) -> AffineOp:
    """``ca(prev(x))`` as one Linear/Conv op (exact)."""
    a, s = ca.scale.flatten(), ca.shift.flatten()
    w = prev.weight * a.reshape((-1,) + (1,) * (prev.weight.dim() - 1))
    b = s if prev.bias is None else prev.bias * a + s
    if isinstance(prev, LinearOp):
        return LinearOp(w, b, prev.in_shape)
    return ConvOp(w, b, prev.stride, prev.padding, prev.dilation, prev.groups, prev.in_shape)


def _fold_before(ca: ChannelAffineOp, lin: LinearOp) -> LinearOp:
    """``lin(ca(x))`` for 1-D features as one Linear op (exact)."""
    a, s = ca.scale.flatten(), ca.shift.flatten()
    b = lin.weight @ s if lin.bias is None else lin.bias + lin.weight @ s
    return LinearOp(lin.weight * a, b, ca.in_shape)


def lower_chain(graph: Graph) -> Optional[Network]:
    """The chain form of ``graph``, or None when it is not a chain of single-input affine ops and
    ReLUs (a branch, a concatenation or a max-pool)."""
    nodes = graph.nodes
    for i, node in enumerate(nodes[1:], start=1):
        if node.inputs != [i - 1] or not (isinstance(node.op, ReluOp) or node.op.affine and len(node.op.in_shapes) == 1):
            return None
    net = Network(in_shape=tuple(graph.in_shape))
    ops: List[AffineOp] = []
    for node in nodes[1:]:
        op = node.op
        if isinstance(op, ReluOp):
            if ops:
                net.stages.append(ops)
                ops = []
            elif not net.stages:
                net.relu_first = True
            continue  # a ReLU right after a ReLU is the identity
        if isinstance(op, LinearOp) and ops and isinstance(ops[-1], ChannelAffineOp) and len(ops[-1].in_shape) == 1:
            op = _fold_before(ops.pop(), op)
        elif isinstance(op, ChannelAffineOp) and ops and isinstance(ops[-1], (LinearOp, ConvOp)):
            op = _fold_after(ops.pop(), op)
        ops.append(op)
    if ops:
        net.stages.append(ops)
    elif net.stages:
        net.relu_last = True
    if not net.stages:
        raise ValueError("etbkernels.bounds: the model has no affine layer (Linear/Conv2d/...) to bound")
    return net


def parse_model(model: nn.Module, in_shape: Shape, ref: torch.Tensor) -> Network:
    """The chain form of ``model`` for per-sample inputs of ``in_shape``; ``ref`` gives dtype and device.

    Traces the model (:mod:`.trace`, :mod:`.build`): raises ValueError naming the first node the
    bounds cannot follow, and also for a model with branches or max-pool, which only the graph
    walkers handle (``etbkernels.bounds`` takes those).
    """
    x = ref if tuple(ref.shape[1:]) == tuple(in_shape) else ref.new_zeros((1,) + tuple(in_shape))
    net = lower_chain(build_graph(model, x))
    if net is None:
        raise ValueError("parse_model: the model has branches, a concatenation or max-pool: not a chain of "
                         "layers (etbkernels.bounds handles it as a graph)")
    return net
