"""Turns a traced model (:mod:`.trace`) into a graph of bound operators, reading parameters as they are
now (the trace is cached; the operators are rebuilt on every call, so they see the current weights
and stay differentiable in them).

Each handler below maps one kind of fx node to an operator class (:mod:`.layers`,
:mod:`.graph_ops`). A node no handler takes is refused with its name and source line.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from .graph_ops import AddOp, CatOp, MaxPoolOp, ReluOp
from .layers import AvgPoolOp, ChannelAffineOp, ConvOp, ElementAffineOp, FlattenOp, LinearOp, ReshapeOp, Shape
from .normalize import Normalize
from .trace import Traced, cached_trace, describe, leaf_base, module_name

SUPPORTED = ("layers: Linear, Conv2d (zero padding), ReLU, Flatten, BatchNorm1d/BatchNorm2d (eval mode), "
             "AvgPool2d / AdaptiveAvgPool2d (floor mode, whole windows), MaxPool2d (floor mode, no dilation), "
             "Dropout, Identity, Normalize; functions and methods: relu, x + y, x - y, scalar * / + / -, "
             "torch.cat, flatten / view / reshape (batch kept), mean over the spatial dims, F.linear / F.conv2d "
             "with the model's own parameters")


@dataclass
class Node:
    """One operator of the graph: ``op`` applied to the outputs of nodes ``inputs`` (node 0 is the input)."""

    name: str
    where: str
    op: object
    inputs: List[int]
    shape: Shape


@dataclass
class Graph:
    """Bound operators in topological order; ``nodes[0]`` is the model's input, ``nodes[-1]`` its output."""

    in_shape: Shape
    nodes: List[Node] = field(default_factory=list)

    @property
    def out_shape(self) -> Shape:
        return self.nodes[-1].shape

    relu_last = False  # a graph's output may be anything, a ReLU's included: specs apply to it as it is

    def nonlinear(self) -> List[int]:
        """Indices of the ReLU / max-pool nodes, in order."""
        return [i for i, n in enumerate(self.nodes) if i > 0 and not n.op.affine]

    def stage_shapes(self) -> List[Shape]:
        """The shape of each nonlinear node's input (a given mask's shape), then the output's."""
        return [self.nodes[self.nodes[i].inputs[0]].shape for i in self.nonlinear()] + [self.out_shape]


def unsupported(name: str, mod: nn.Module, why: str = "") -> ValueError:
    extra = f" ({why})" if why else ""
    return ValueError(f"etbkernels.bounds: unsupported layer {name} = {mod.__class__.__name__}{extra}; "
                      f"supported: {SUPPORTED}")


class _Ctx:
    """What a handler sees of one node: its tensor inputs' shapes, constants, the module, the output shape."""

    def __init__(self, builder: "_Builder", node: fx.Node):
        self.b, self.node = builder, node
        self.shape: Shape = builder.traced.shapes[node.name]
        self.module: Optional[nn.Module] = builder.model.get_submodule(node.target) if node.op == "call_module" else None
        self.name = module_name(node.target) if node.op == "call_module" else describe(node, builder.traced.where)
        self.ref = builder.ref

    def args(self) -> list:
        return list(self.node.args)

    def kw(self, name: str, pos: int, default=None):
        a = self.node.args
        return a[pos] if len(a) > pos else self.node.kwargs.get(name, default)

    def is_tensor(self, a) -> bool:
        return isinstance(a, fx.Node) and self.b.traced.shapes.get(a.name) is not None

    def shape_of(self, a) -> Shape:
        return self.b.traced.shapes[a.name]

    def value(self, a):
        """A non-tensor argument's value: a number, a size seen while tracing, or a constant tensor
        (parameters and what is computed from them, evaluated now: current and differentiable)."""
        if isinstance(a, fx.Node):
            if a.name in self.b.traced.constant:
                return self.b.const(a)
            return self.b.traced.values[a.name]
        if isinstance(a, (list, tuple)):
            return type(a)(self.value(v) for v in a)
        return a

    def refuse(self, why: str) -> ValueError:
        if self.module is not None:
            return unsupported(self.name + self.b.traced.where.get(self.node.name, ""), self.module, why)
        return ValueError(f"etbkernels.bounds: {self.name}: {why}")


# A handler returns (op, [tensor input nodes]) or a list of ops to apply in order to one input
Handler = Callable[[_Ctx], object]
_MODULES: Dict[type, Handler] = {}
_FUNCTIONS: Dict[object, Handler] = {}
_METHODS: Dict[str, Handler] = {}
ALIAS = object()  # a handler's answer for an identity (Dropout, Identity, contiguous()): the node is its input


def handles(modules=(), functions=(), methods=()):
    def register(fn):
        for m in modules:
            _MODULES[m] = fn
        for f in functions:
            _FUNCTIONS[f] = fn
        for m in methods:
            _METHODS[m] = fn
        return fn
    return register


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# ----------------------------------------------------------------------------------- handlers
@handles(modules=(nn.Linear,))
def _linear_module(c: _Ctx):
    mod, (x,) = c.module, c.args()
    return _linear(c, x, mod.weight, mod.bias, f"in_features={mod.in_features}")


@handles(functions=(F.linear,))
def _linear_function(c: _Ctx):
    x, w, b = c.kw("input", 0), c.kw("weight", 1), c.kw("bias", 2)
    return _linear(c, x, c.value(w), None if b is None else c.value(b), "its weight")


def _linear(c: _Ctx, x, weight: Tensor, bias, what: str):
    shape = c.shape_of(x)
    if len(shape) != 1 or shape[0] != weight.shape[1]:
        raise c.refuse(f"{what} expects {weight.shape[1]} input features but its input has per-sample shape {shape}; "
                       "add an nn.Flatten() before it")
    return LinearOp(weight, bias, shape), [x]


@handles(modules=(nn.Conv2d,))
def _conv_module(c: _Ctx):
    mod, (x,) = c.module, c.args()
    if mod.padding_mode != "zeros":
        raise c.refuse(f"padding_mode={mod.padding_mode!r}; only 'zeros'")
    if isinstance(mod.padding, str):
        raise c.refuse(f"padding={mod.padding!r}; give the padding as numbers")
    shape = c.shape_of(x)
    if len(shape) != 3 or shape[0] != mod.in_channels:
        raise c.refuse(f"in_channels={mod.in_channels} but its input has per-sample shape {shape}")
    return ConvOp(mod.weight, mod.bias, _pair(mod.stride), _pair(mod.padding), _pair(mod.dilation), mod.groups,
                  shape), [x]


@handles(functions=(F.conv2d,))
def _conv_function(c: _Ctx):
    x, w, b = c.kw("input", 0), c.value(c.kw("weight", 1)), c.kw("bias", 2)
    stride, padding, dilation, groups = (c.value(c.kw(k, i, d)) for k, i, d in
                                         (("stride", 3, 1), ("padding", 4, 0), ("dilation", 5, 1), ("groups", 6, 1)))
    if isinstance(padding, str):
        raise c.refuse(f"padding={padding!r}; give the padding as numbers")
    return ConvOp(w, None if b is None else c.value(b), _pair(stride), _pair(padding), _pair(dilation), groups,
                  c.shape_of(x)), [x]


@handles(modules=(nn.ReLU,), functions=(F.relu, torch.relu, torch.relu_, F.relu_), methods=("relu", "relu_"))
def _relu(c: _Ctx):
    return ReluOp(c.shape), [c.args()[0]]


@handles(modules=(nn.BatchNorm1d, nn.BatchNorm2d, Normalize))
def _channel_affine_module(c: _Ctx):
    (x,) = c.args()
    return channel_affine(c, c.module, c.shape_of(x)), [x]


def channel_affine(c: _Ctx, mod: nn.Module, shape: Shape) -> ChannelAffineOp:
    """Scale/shift of eval BatchNorm or Normalize as a ChannelAffineOp on inputs of ``shape``."""
    ref = c.ref
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if mod.training:
            raise c.refuse("in training mode it uses batch statistics; call model.eval()")
        if mod.running_mean is None or mod.running_var is None:
            raise c.refuse("track_running_stats=False")
        want = 3 if isinstance(mod, nn.BatchNorm2d) else 1
        if len(shape) != want:
            raise c.refuse(f"expects per-sample input of {want} dims, got shape {shape}")
        scale = torch.rsqrt(mod.running_var + mod.eps)
        if mod.weight is not None:
            scale = scale * mod.weight
        shift = -mod.running_mean * scale
        if mod.bias is not None:
            shift = shift + mod.bias
    else:  # Normalize
        mean = torch.as_tensor(mod.mean, dtype=ref.dtype, device=ref.device).flatten()
        std = torch.as_tensor(mod.std, dtype=ref.dtype, device=ref.device).flatten()
        if mean.numel() == 1 and shape[0] != 1:
            mean, std = mean.expand(shape[0]), std.expand(shape[0])
        scale, shift = 1.0 / std, -mean / std
    if scale.numel() != shape[0]:
        raise c.refuse(f"has {scale.numel()} channels but its input has shape {shape}")
    return ChannelAffineOp(scale.to(ref.dtype), shift.to(ref.dtype), shape)


@handles(modules=(nn.Flatten,), functions=(torch.flatten, torch.reshape), methods=("flatten", "view", "reshape"))
def _reshape(c: _Ctx):
    x = c.args()[0]
    shape = c.shape_of(x)
    if shape == c.shape:
        return ALIAS
    if len(c.shape) == 1:
        return FlattenOp(shape), [x]
    return ReshapeOp(shape, c.shape), [x]


@handles(modules=(nn.Dropout, nn.Identity), functions=(F.dropout,), methods=("contiguous", "clone", "detach"))
def _identity(c: _Ctx):
    return ALIAS


@handles(modules=(nn.AvgPool2d,), functions=(F.avg_pool2d,))
def _avg_pool(c: _Ctx):
    mod = c.module
    if mod is not None:
        kernel, stride, padding = mod.kernel_size, mod.stride, mod.padding
        ceil, include_pad, divisor = mod.ceil_mode, mod.count_include_pad, mod.divisor_override
    else:
        kernel, stride, padding, ceil, include_pad, divisor = (c.value(c.kw(k, i, d)) for k, i, d in (
            ("kernel_size", 1, None), ("stride", 2, None), ("padding", 3, 0), ("ceil_mode", 4, False),
            ("count_include_pad", 5, True), ("divisor_override", 6, None)))
    if ceil or divisor is not None:
        raise c.refuse("ceil_mode / divisor_override")
    if not include_pad and _pair(padding) != (0, 0):
        raise c.refuse("count_include_pad=False with padding")
    x, shape, kernel, stride = _pool_input(c, kernel, stride)
    return AvgPoolOp(kernel, stride, _pair(padding), shape, c.ref.dtype, c.ref.device), [x]


@handles(modules=(nn.AdaptiveAvgPool2d,), functions=(F.adaptive_avg_pool2d,))
def _adaptive_avg_pool(c: _Ctx):
    x = c.args()[0]
    shape = c.shape_of(x)
    if len(shape) != 3:
        raise c.refuse(f"needs (C, H, W) input, got per-sample shape {shape}")
    (H, W), (oh, ow) = shape[1:], c.shape[1:]
    if H % oh or W % ow:
        raise c.refuse(f"output size {(oh, ow)} does not divide the input size {(H, W)}: windows of unequal size")
    k = (H // oh, W // ow)
    return AvgPoolOp(k, k, (0, 0), shape, c.ref.dtype, c.ref.device), [x]


@handles(modules=(nn.MaxPool2d,), functions=(F.max_pool2d,))
def _max_pool(c: _Ctx):
    mod = c.module
    if mod is not None:
        kernel, stride, padding, dilation = mod.kernel_size, mod.stride, mod.padding, mod.dilation
        ceil, indices = mod.ceil_mode, mod.return_indices
    else:
        kernel, stride, padding, dilation, ceil, indices = (c.value(c.kw(k, i, d)) for k, i, d in (
            ("kernel_size", 1, None), ("stride", 2, None), ("padding", 3, 0), ("dilation", 4, 1),
            ("ceil_mode", 5, False), ("return_indices", 6, False)))
    if ceil or indices or _pair(dilation) != (1, 1):
        raise c.refuse("ceil_mode, return_indices or dilation != 1")
    x, shape, kernel, stride = _pool_input(c, kernel, stride)
    return MaxPoolOp(kernel, stride, _pair(padding), shape), [x]


def _pool_input(c: _Ctx, kernel, stride):
    """(input node, its (C, H, W) shape, kernel pair, stride pair: the kernel's when not given)."""
    x = c.args()[0]
    shape = c.shape_of(x)
    if len(shape) != 3:
        raise c.refuse(f"needs (C, H, W) input, got per-sample shape {shape}")
    kernel = _pair(kernel)
    return x, shape, kernel, kernel if stride is None or stride == [] else _pair(stride)


@handles(functions=(torch.mean,), methods=("mean",))
def _mean(c: _Ctx):
    x = c.args()[0]
    shape = c.shape_of(x)
    dims = c.value(c.kw("dim", 1))
    dims = sorted(d % (len(shape) + 1) for d in ((dims,) if isinstance(dims, int) else tuple(dims or ())))
    if len(shape) != 3 or dims != [2, 3]:
        raise c.refuse("only the mean over the spatial dimensions (2, 3) of (N, C, H, W) is supported")
    pool = AvgPoolOp(shape[1:], shape[1:], (0, 0), shape, c.ref.dtype, c.ref.device)
    return ([pool] if len(c.shape) == 3 else [pool, FlattenOp(pool.out_shape)]), [x]


@handles(functions=(operator.add, torch.add, operator.sub, torch.sub), methods=("add", "sub"))
def _add_sub(c: _Ctx):
    a, b = c.args()[:2]
    sign = -1.0 if getattr(c.node.target, "__name__", c.node.target) in ("sub",) else 1.0
    alpha = c.value(c.node.kwargs.get("alpha", 1))
    if alpha != 1:
        raise c.refuse("alpha != 1")
    if c.is_tensor(a) and c.is_tensor(b):
        if c.shape_of(a) != c.shape_of(b):
            raise c.refuse(f"adds branches of per-sample shapes {c.shape_of(a)} and {c.shape_of(b)}: broadcasting "
                           "between branches is not supported")
        return AddOp(c.shape, sign), [a, b]
    if c.is_tensor(a):
        return _scale_shift(c, a, 1.0, sign * _number(c, b))
    return _scale_shift(c, b, sign, _number(c, a))


@handles(functions=(operator.mul, torch.mul, operator.truediv, torch.div, operator.neg, torch.neg),
         methods=("mul", "div", "neg"))
def _scale(c: _Ctx):
    name = getattr(c.node.target, "__name__", c.node.target)
    args = c.args()
    if name == "neg":
        return _scale_shift(c, args[0], -1.0, 0.0)
    a, b = args[:2]
    if c.is_tensor(a) and c.is_tensor(b):
        raise c.refuse("the product of two tensors is not affine")
    if name in ("truediv", "div"):
        if not c.is_tensor(a):
            raise c.refuse("a number divided by a tensor is not affine")
        return _scale_shift(c, a, 1.0 / _number(c, b), 0.0)  # a tensor constant: its reciprocal
    x, k = (a, b) if c.is_tensor(a) else (b, a)
    return _scale_shift(c, x, _number(c, k), 0.0)


def _number(c: _Ctx, a):
    """A constant operand: a Python number, or a tensor (kept as a tensor, for gradients)."""
    v = c.value(a)
    if isinstance(v, bool) or not isinstance(v, (int, float, Tensor)):
        raise c.refuse(f"an operand is {type(v).__name__}, not a number, a constant tensor or a branch of the graph")
    return v


def _scale_shift(c: _Ctx, x, scale, shift):
    """``x * scale + shift`` for constants: per channel (foldable into a neighbouring layer) when both
    are numbers or vary along the channel dimension only, else elementwise."""
    shape, ref = c.shape_of(x), c.ref
    per = []
    for v in (scale, shift):
        t = torch.as_tensor(v, dtype=ref.dtype, device=ref.device)
        if t.dim() > len(shape) + 1 or t.dim() == len(shape) + 1 and t.shape[0] != 1:
            raise c.refuse(f"a constant of shape {tuple(t.shape)} would change the batch dimension")
        t = t.reshape(t.shape[1:]) if t.dim() == len(shape) + 1 else t
        try:
            t = torch.broadcast_to(t, shape)
        except RuntimeError:
            raise c.refuse(f"a constant of shape {tuple(t.shape)} does not broadcast to the per-sample shape "
                           f"{shape}") from None
        per.append(t)
    ch = shape[0] if shape else 1
    flat = [t.reshape(ch, -1) for t in per]
    if all(bool((f == f[:, :1]).all()) for f in flat):  # constant within each channel
        return ChannelAffineOp(flat[0][:, 0], flat[1][:, 0], shape), [x]
    return ElementAffineOp(per[0], per[1], shape), [x]


@handles(functions=(torch.cat, torch.concat))
def _cat(c: _Ctx):
    xs = c.kw("tensors", 0)
    dim = c.value(c.kw("dim", 1, 0))
    if not all(c.is_tensor(x) for x in xs):
        raise c.refuse("torch.cat of something other than branches of the graph")
    shapes = [c.shape_of(x) for x in xs]
    d = dim % (len(shapes[0]) + 1)
    if d == 0:
        raise c.refuse("concatenation along the batch dimension")
    return CatOp(shapes, d - 1), list(xs)


_NON_TENSOR = {"size", "dim", "numel"}


# ----------------------------------------------------------------------------------- builder
class _Builder:
    def __init__(self, model: nn.Module, traced: Traced, ref: Tensor):
        self.model, self.traced, self.ref = model, traced, ref
        self.index: Dict[str, int] = {}
        self.consts: Dict[str, object] = {}
        self.graph: Graph = None  # set on the placeholder

    def const(self, node: fx.Node):
        """A constant node's value, computed from the model's current parameters (memoized per build)."""
        if node.name in self.consts:
            return self.consts[node.name]
        if self.traced.values.get(node.name) is not None:  # a number or size: as seen while tracing
            return self.traced.values[node.name]
        args = fx.node.map_arg(node.args, self.const)
        kwargs = fx.node.map_arg(node.kwargs, self.const)
        if node.op == "get_attr":
            v = self.model
            for part in node.target.split("."):
                v = getattr(v, part)
        elif node.op == "call_function":
            v = node.target(*args, **kwargs)
        elif node.op == "call_method":
            v = getattr(args[0], node.target)(*args[1:], **kwargs)
        else:
            v = self.model.get_submodule(node.target)(*args, **kwargs)
        self.consts[node.name] = v
        return v

    def handler(self, node: fx.Node) -> Optional[Handler]:
        if node.op == "call_module":
            mod = self.model.get_submodule(node.target)
            base = leaf_base(mod) or type(mod)
            return _MODULES.get(base)
        if node.op == "call_function":
            return _FUNCTIONS.get(node.target)
        if node.op == "call_method":
            return _METHODS.get(node.target)
        return None

    def visit(self, node: fx.Node) -> None:
        where = self.traced.where
        if node.op == "placeholder":
            if self.graph is not None:
                raise ValueError(f"etbkernels.bounds: the model takes more than one input ({describe(node, where)}); "
                                 "bounds need a model of one tensor")
            self.graph = Graph(tuple(self.traced.shapes[node.name]))
            self.graph.nodes.append(Node(node.name, "", None, [], self.graph.in_shape))
            self.index[node.name] = 0
            return
        if node.name in self.traced.constant:
            return  # a parameter, or computed from parameters alone: read by the handler that uses it
        if node.op != "output" and self.traced.shapes.get(node.name) is None:
            # a non-tensor value (x.size(0), an index into it): read by the handlers that use it
            if not (node.op == "call_method" and node.target in _NON_TENSOR
                    or node.op == "call_function" and node.target is operator.getitem):
                raise ValueError(f"etbkernels.bounds: {describe(node, where)} gives a "
                                 f"{type(self.traced.values.get(node.name)).__name__}, not a tensor; the bounds "
                                 "cannot follow it")
            return
        if node.op == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node) or out.name not in self.index:
                raise ValueError(f"etbkernels.bounds: the model returns {type(out).__name__}; bounds need a model "
                                 "that returns one tensor")
            i = self.index[out.name]
            if i != len(self.graph.nodes) - 1:  # the output node last: walkers read nodes[-1]
                raise ValueError(f"etbkernels.bounds: the model's output ({out.name}) is not its last operation; "
                                 "bounds need every operation to lead to the output")
            return
        fn = self.handler(node)
        if fn is None:
            self._refuse_unsupported(node)
        self._check_inplace(node)
        ctx = _Ctx(self, node)
        res = fn(ctx)
        tensor_args = [a for a in node.args if isinstance(a, fx.Node) and self.traced.shapes.get(a.name) is not None]
        if res is ALIAS:
            self.index[node.name] = self.index[tensor_args[0].name]
            return
        ops, inputs = res
        ops = ops if isinstance(ops, list) else [ops]
        idx = [self.index[x.name] for x in inputs]
        for k, op in enumerate(ops):
            name = node.name if k == len(ops) - 1 else f"{node.name}.{k}"
            self.graph.nodes.append(Node(name, describe(node, where), op, idx, tuple(op.out_shape)))
            idx = [len(self.graph.nodes) - 1]
        if tuple(ops[-1].out_shape) != tuple(self.traced.shapes[node.name]):
            raise ValueError(f"etbkernels.bounds: {describe(node, where)}: the bound operator's shape "
                             f"{tuple(ops[-1].out_shape)} differs from the model's {self.traced.shapes[node.name]}")
        self.index[node.name] = idx[0]

    def _refuse_unsupported(self, node: fx.Node):
        if node.op == "call_module":
            raise unsupported(module_name(node.target) + self.traced.where.get(node.name, ""),
                              self.model.get_submodule(node.target))
        raise ValueError(f"etbkernels.bounds: {describe(node, self.traced.where)} has no bound operator; "
                         f"supported: {SUPPORTED}")

    def _check_inplace(self, node: fx.Node):
        """An in-place op changes its input for every other user of it, which the graph does not show:
        allowed only where the input has no other user and is not the model's input."""
        inplace = node.kwargs.get("inplace", False) is True or (
            node.op == "call_method" and node.target.endswith("_")) or (
            node.op == "call_function" and getattr(node.target, "__name__", "").endswith("_")) or (
            node.op == "call_module" and getattr(self.model.get_submodule(node.target), "inplace", False) is True)
        if not inplace or not node.args or not isinstance(node.args[0], fx.Node):
            return
        x = node.args[0]
        if x.op == "placeholder" or len(x.users) > 1:
            raise ValueError(f"etbkernels.bounds: {describe(node, self.traced.where)} changes its input in place, and "
                             f"that input ({x.name}) is {'the model input' if x.op == 'placeholder' else 'used elsewhere'}"
                             "; the bounds would follow a different computation: use the out-of-place form")


def build_graph(model: nn.Module, x: Tensor) -> Graph:
    """The bound-operator graph of ``model`` for inputs like ``x`` (batched), with its current parameters."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"etbkernels.bounds: model must be an nn.Module, got {type(model).__name__}")
    traced = cached_trace(model, x)
    b = _Builder(model, traced, x)
    for node in traced.graph.nodes:
        b.visit(node)
    if len(b.graph.nodes) == 1:
        raise ValueError("etbkernels.bounds: the model has no layer to bound (it returns its input)")
    return b.graph
