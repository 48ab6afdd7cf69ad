"""Turns an ``nn.Sequential`` into affine stages separated by ReLUs.

A network ``A_L relu ... relu A_1`` becomes ``stages = [ops of A_1, ..., ops of A_L]``: each
stage is a short list of :mod:`~etbkernels.network.layers` ops whose composition is the affine
map between two ReLUs. Per-channel affine layers (eval BatchNorm, input normalization) are
folded into the Linear/Conv2d just before them (exact), and a per-feature affine map right
before a Linear is folded into it; AvgPool2d stays an op of its own (it is already affine).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
from torch import nn

from .layers import AffineOp, AvgPoolOp, ChannelAffineOp, ConvOp, FlattenOp, LinearOp, Shape
from .normalize import Normalize

SUPPORTED = ("Linear, Conv2d (zero padding), ReLU, Flatten (start_dim=1), BatchNorm1d/BatchNorm2d (eval mode), "
             "AvgPool2d (floor mode), Dropout, Identity, Normalize (mean/std), nested nn.Sequential")


@dataclass
class Network:
    """A parsed network: ``stages[k]`` is the affine map before the k-th ReLU (the last one ends it)."""

    in_shape: Shape
    stages: List[List[AffineOp]] = field(default_factory=list)
    relu_first: bool = False  # the model starts with a ReLU (applied to the input box)
    relu_last: bool = False   # the model ends with a ReLU (applied to the output bounds)

    @property
    def out_shape(self) -> Shape:
        return self.stages[-1][-1].out_shape

    def stage_shapes(self) -> List[Shape]:
        """Per-sample output shape of each stage (the pre-activations; the last is the output)."""
        return [st[-1].out_shape for st in self.stages]


# The parser reads a Sequential's children and their parameters; it never runs a forward. So a
# model is parsed only where its children are its computation: a supported class (or subclass)
# must keep every method through which the base class's forward computes, and no module may be
# called twice, be hooked or have its call replaced. Anything else is refused, not guessed at.
_DISPATCH = (  # (supported base, the methods its forward goes through)
    (nn.Sequential, ("forward", "__iter__")),  # Sequential.forward: `for module in self`
    (nn.Linear, ("forward",)),
    (nn.Conv2d, ("forward", "_conv_forward")),
    (nn.ReLU, ("forward",)),
    (nn.Flatten, ("forward",)),
    (nn.BatchNorm1d, ("forward",)),
    (nn.BatchNorm2d, ("forward",)),
    (nn.AvgPool2d, ("forward",)),
    (nn.Dropout, ("forward",)),
    (nn.Identity, ("forward",)),
    (Normalize, ("forward",)),
)
# What module(x) runs before forward (hooks, then forward); a class or an instance may replace it.
_CALL = tuple(m for m in ("__call__", "_wrapped_call_impl", "_call_impl") if hasattr(nn.Module, m))


def _describe(name: str, mod: nn.Module) -> str:
    return f"{name} ({mod.__class__.__name__})"


def _check_global_hooks() -> None:
    """Global module hooks run on every module call; backward ones leave the forward's values alone."""
    g = torch.nn.modules.module
    for attr, kind, fn in (("_global_forward_pre_hooks", "forward pre-hook", "register_module_forward_pre_hook"),
                           ("_global_forward_hooks", "forward hook", "register_module_forward_hook")):
        if getattr(g, attr, None):
            raise ValueError(f"etbkernels.bounds: a global module {kind} is registered "
                             f"(torch.nn.modules.module.{fn}): it runs on every module, model (Sequential) "
                             "included, and can change what the model computes, which the bounds cannot see; "
                             "remove it (handle.remove()) before computing bounds")


def _check_module(name: str, mod: nn.Module) -> None:
    """Refuses ``mod`` if calling it may compute something other than what the parser reads."""
    cls = type(mod)
    for attr, kind in (("_forward_pre_hooks", "forward pre-hook"), ("_forward_hooks", "forward hook")):
        n = len(getattr(mod, attr, None) or ())
        if n:
            raise ValueError(f"etbkernels.bounds: {_describe(name, mod)} has {n} {kind}(s) registered: a hook can "
                             "change what the module computes, which the bounds cannot see; remove it "
                             "(handle.remove()) before computing bounds (backward hooks are fine)")
    for m in _CALL:
        if getattr(cls, m) is not getattr(nn.Module, m):
            raise ValueError(f"etbkernels.bounds: {_describe(name, mod)} overrides {m} of nn.Module, so calling it "
                             "may compute something other than its layer; the bounds cannot follow it")
    base, methods = next(((b, ms) for b, ms in _DISPATCH if isinstance(mod, b)), (None, ("forward",)))
    for m in _CALL[1:] + methods:
        if not m.startswith("__") and m in vars(mod):  # an instance attribute wins over the class's method
            # (dunders are looked up on the class, so an instance's own is never called)
            raise ValueError(f"etbkernels.bounds: {_describe(name, mod)} has its own {m} set on the instance, so "
                             "calling it may compute something other than its layer; the bounds cannot follow it")
    if base is None:
        # an unsupported layer is refused by the parser itself; a foreign class named Normalize is
        # trusted to compute (x - mean) / std, as documented (its hooks and call were checked above)
        return
    for m in methods:
        if getattr(cls, m) is not getattr(base, m):
            what = "the parser reads its children in order" if base is nn.Sequential else \
                "the parser reads its parameters, not its code"
            full = ("nn." if base.__module__.startswith("torch.") else "etbkernels.") + base.__name__
            raise ValueError(f"etbkernels.bounds: {_describe(name, mod)} overrides {m} of {full}, but {what}, "
                             f"so its bounds would describe another computation; use {full} itself or a subclass "
                             f"that keeps its {m}")


def _flatten_modules(model: nn.Sequential, prefix: str, seen: Dict[int, str]) -> List[Tuple[str, nn.Module]]:
    """The leaf layers of ``model`` in call order, each checked (see :func:`_check_module`).

    Reads ``_modules`` itself: ``named_children()`` skips a module already seen (and None), so a
    module used twice would silently be parsed once.
    """
    out = []
    for name, mod in model._modules.items():
        full = f"{prefix}[{name}]" if name.isdigit() else f"{prefix}.{name}"
        if mod is None:
            raise ValueError(f"etbkernels.bounds: {full} is None, which nn.Sequential's forward would call; "
                             "remove the entry")
        if id(mod) in seen:
            raise ValueError(f"etbkernels.bounds: {_describe(full, mod)} is used twice in the model "
                             f"({seen[id(mod)]} and {full}): a reused module cannot be parsed soundly; give each "
                             "place its own instance (a new nn.ReLU() per activation; for shared weights, a new "
                             "layer whose parameters are the shared ones, e.g. new.weight = old.weight)")
        seen[id(mod)] = full
        _check_module(full, mod)
        if isinstance(mod, nn.Sequential):
            out.extend(_flatten_modules(mod, full, seen))
        else:
            out.append((full, mod))
    return out


def _pair(v) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _unsupported(name: str, mod: nn.Module, why: str = "") -> ValueError:
    extra = f" ({why})" if why else ""
    return ValueError(f"etbkernels.bounds: unsupported layer {name} = {mod.__class__.__name__}{extra}; "
                      f"supported: {SUPPORTED}")


def _is_normalize(mod: nn.Module) -> bool:
    return mod.__class__.__name__ == "Normalize" and hasattr(mod, "mean") and hasattr(mod, "std")


def _channel_affine(name: str, mod: nn.Module, shape: Shape, ref: torch.Tensor) -> ChannelAffineOp:
    """Scale/shift of eval BatchNorm or Normalize as a ChannelAffineOp on inputs of ``shape``."""
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if mod.training:
            raise _unsupported(name, mod, "in training mode it uses batch statistics; call model.eval()")
        if mod.running_mean is None or mod.running_var is None:
            raise _unsupported(name, mod, "track_running_stats=False")
        want = 3 if isinstance(mod, nn.BatchNorm2d) else 1
        if len(shape) != want:
            raise _unsupported(name, mod, f"expects per-sample input of {want} dims, got shape {shape}")
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
        raise _unsupported(name, mod, f"has {scale.numel()} channels but its input has shape {shape}")
    return ChannelAffineOp(scale.to(ref.dtype), shift.to(ref.dtype), shape)


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


def parse_model(model: nn.Module, in_shape: Shape, ref: torch.Tensor) -> Network:
    """Parses ``model`` for per-sample inputs of ``in_shape``; ``ref`` gives dtype and device.

    Raises ValueError naming the first unsupported layer, or the first module whose call is not
    what the parser reads (used twice, hooked, a subclass overriding its forward or ``__call__``;
    see :func:`_check_module`), TypeError for a non-Sequential model.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"etbkernels.bounds: model must be an nn.Sequential (nested Sequentials allowed), got "
                        f"{model.__class__.__name__}; supported layers: {SUPPORTED}")
    # checked on every call (nothing is cached): a hook added after an earlier call is seen
    _check_global_hooks()
    _check_module("model", model)
    layers = _flatten_modules(model, "model", {id(model): "model"})
    net = Network(in_shape=tuple(in_shape))
    shape: Shape = tuple(in_shape)
    ops: List[AffineOp] = []
    for name, mod in layers:
        if isinstance(mod, (nn.Dropout, nn.Identity)):
            continue  # bounds describe the deterministic (eval) network
        if isinstance(mod, nn.ReLU):
            if ops:
                net.stages.append(ops)
                ops = []
            elif not net.stages:
                net.relu_first = True
            # a ReLU right after a ReLU is the identity
            continue
        op: AffineOp
        if isinstance(mod, nn.Linear):
            if len(shape) != 1 or shape[0] != mod.in_features:
                raise _unsupported(name, mod, f"in_features={mod.in_features} but its input has per-sample shape "
                                   f"{shape}; add an nn.Flatten() before it")
            op = LinearOp(mod.weight, mod.bias, shape)
            if ops and isinstance(ops[-1], ChannelAffineOp) and len(ops[-1].in_shape) == 1:
                op = _fold_before(ops.pop(), op)
        elif isinstance(mod, nn.Conv2d):
            if mod.padding_mode != "zeros":
                raise _unsupported(name, mod, f"padding_mode={mod.padding_mode!r}; only 'zeros'")
            if isinstance(mod.padding, str):
                raise _unsupported(name, mod, f"padding={mod.padding!r}; give the padding as numbers")
            if len(shape) != 3 or shape[0] != mod.in_channels:
                raise _unsupported(name, mod, f"in_channels={mod.in_channels} but its input has per-sample shape "
                                   f"{shape}")
            op = ConvOp(mod.weight, mod.bias, _pair(mod.stride), _pair(mod.padding), _pair(mod.dilation),
                        mod.groups, shape)
        elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)) or _is_normalize(mod):
            op = _channel_affine(name, mod, shape, ref)
            if ops and isinstance(ops[-1], (LinearOp, ConvOp)):
                op = _fold_after(ops.pop(), op)
        elif isinstance(mod, nn.Flatten):
            if mod.start_dim != 1 or mod.end_dim != -1:
                raise _unsupported(name, mod, f"start_dim={mod.start_dim}, end_dim={mod.end_dim}; only 1, -1")
            if len(shape) == 1:
                continue
            op = FlattenOp(shape)
        elif isinstance(mod, nn.AvgPool2d):
            if mod.ceil_mode or mod.divisor_override is not None:
                raise _unsupported(name, mod, "ceil_mode / divisor_override")
            padding = _pair(mod.padding)
            if not mod.count_include_pad and padding != (0, 0):
                raise _unsupported(name, mod, "count_include_pad=False with padding")
            if len(shape) != 3:
                raise _unsupported(name, mod, f"needs (C, H, W) input, got per-sample shape {shape}")
            kernel = _pair(mod.kernel_size)
            stride = kernel if mod.stride is None else _pair(mod.stride)
            op = AvgPoolOp(kernel, stride, padding, shape, ref.dtype, ref.device)
        else:
            raise _unsupported(name, mod)
        ops.append(op)
        shape = op.out_shape
    if ops:
        net.stages.append(ops)
    elif net.stages:
        net.relu_last = True
    if not net.stages:
        raise ValueError("etbkernels.bounds: the model has no affine layer (Linear/Conv2d/...) to bound")
    return net
