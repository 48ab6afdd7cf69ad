"""Traces a model's real forward into a graph that the bound operators can follow.

torch.fx symbolic tracing (not torch.export): it records module calls as nodes of their own
(``call_module``), so the bounds read a layer's parameters where it is called, once per call
(a module used twice is two nodes), works the same on torch 2.11 to 2.14 for the plain
Python forwards this library accepts, and needs no example input to trace. Supported layer
types whose class keeps its library ``forward`` are leaves; every other module (containers,
subclasses with their own ``forward``, custom blocks) is traced through, so its computation is
what gets bounded.

fx calls ``forward`` directly, bypassing hooks: a model with any forward hook is refused here,
as is anything that could make the traced graph differ from the model's call (see
:func:`check_calls`). Shapes come from running the traced graph on two small batches.
"""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Any, Dict, Optional, Set, Tuple

import torch
import torch.fx as fx
from torch import nn

from .layers import Shape
from .normalize import Normalize

_TORCH_DIR = os.path.dirname(torch.__file__)
_NETWORK_DIR = os.path.dirname(os.path.abspath(__file__))

# Leaf layer types: bounded from their parameters, when their class keeps the library's forward
# (and the methods that forward goes through).
LEAVES: Tuple[Tuple[type, Tuple[str, ...]], ...] = (
    (nn.Linear, ("forward",)),
    (nn.Conv2d, ("forward", "_conv_forward")),
    (nn.ReLU, ("forward",)),
    (nn.Flatten, ("forward",)),
    (nn.BatchNorm1d, ("forward",)),
    (nn.BatchNorm2d, ("forward",)),
    (nn.AvgPool2d, ("forward",)),
    (nn.AdaptiveAvgPool2d, ("forward",)),
    (nn.MaxPool2d, ("forward",)),
    (nn.Dropout, ("forward",)),
    (nn.Identity, ("forward",)),
    (Normalize, ("forward",)),
)
_CALL = tuple(m for m in ("__call__", "_wrapped_call_impl", "_call_impl") if hasattr(nn.Module, m))


def leaf_base(mod: nn.Module) -> Optional[type]:
    """The supported layer type ``mod`` is bounded as, or None if it must be traced through.

    A module of a foreign class named ``Normalize`` with ``mean`` and ``std`` counts as
    :class:`Normalize` (documented in docs/networks.md)."""
    if type(mod).__name__ == "Normalize" and hasattr(mod, "mean") and hasattr(mod, "std") \
            and not isinstance(mod, Normalize):
        return Normalize
    for base, methods in LEAVES:
        if isinstance(mod, base):
            own = [m for m in methods if getattr(type(mod), m) is not getattr(base, m) or m in vars(mod)]
            return None if own else base
    return None


@dataclass
class Traced:
    """A traced model: the fx graph, each node's per-sample output shape (None: not a tensor), and
    where each node comes from in the user's code."""

    graph: fx.Graph
    shapes: Dict[str, Optional[Shape]]  # None: not a tensor that depends on the input
    values: Dict[str, Any]  # non-tensor node values (sizes, ints) seen while running the graph
    where: Dict[str, str]
    constant: Set[str]  # nodes that do not depend on the input (parameters and what is computed from them)


class _Tracer(fx.Tracer):
    def __init__(self):
        super().__init__()
        self.record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # torch.nn's own layers stay whole even where unsupported, so the refusal names the layer
        # (a supported type with its own forward is traced through)
        if leaf_base(m) is not None:
            return True
        return type(m).__module__.startswith("torch.nn.") and not isinstance(
            m, (nn.Sequential, nn.ModuleList, nn.ModuleDict) + tuple(b for b, _ in LEAVES))


def module_name(target: str) -> str:
    """fx's ``0.1.fc`` as ``model[0][1].fc``."""
    out = "model"
    for part in target.split(".") if target else []:
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


def describe(node: fx.Node, where: Dict[str, str]) -> str:
    """``node 'add_1' (operator.add) at model.py:12``: for error messages."""
    return f"node {node.name!r} ({_target_name(node)}){where.get(node.name, '')}"


def _target_name(node: fx.Node) -> str:
    t = node.target
    if node.op == "call_module":
        return f"module {t}"
    if node.op == "call_method":
        return f"method .{t}()"
    if callable(t):
        mod = getattr(t, "__module__", None) or ""
        return f"{mod + '.' if mod else ''}{getattr(t, '__name__', repr(t))}"
    return str(t)


def _source_line(stack_trace: Optional[str]) -> str:
    """`` at FILE:LINE: code`` of the innermost frame outside torch and this package."""
    if not stack_trace:
        return ""
    best = ""
    lines = stack_trace.strip().splitlines()
    for i, line in enumerate(lines):
        s = line.strip()
        if not s.startswith("File "):
            continue
        try:
            path = s.split('"')[1]
            num = s.split("line ")[1].split(",")[0]
        except IndexError:
            continue
        if os.path.abspath(path).startswith((_TORCH_DIR, _NETWORK_DIR)):
            continue
        code = lines[i + 1].strip() if i + 1 < len(lines) else ""
        best = f" at {os.path.basename(path)}:{num}" + (f": {code}" if code else "")
    return best


def check_calls(model: nn.Module) -> None:
    """Refuses what fx would silently bypass or misread: forward hooks and pre-hooks (on any module,
    or global ones), classes that replace nn.Module's call, and a model that contains itself."""
    g = torch.nn.modules.module
    for attr, kind, fn in (("_global_forward_pre_hooks", "forward pre-hook", "register_module_forward_pre_hook"),
                           ("_global_forward_hooks", "forward hook", "register_module_forward_hook")):
        if getattr(g, attr, None):
            raise ValueError(f"etbkernels.bounds: a global module {kind} is registered "
                             f"(torch.nn.modules.module.{fn}): it runs on every module and can change what the model "
                             "computes, which the bounds cannot see; remove it (handle.remove()) before computing bounds")
    for name, mod in model.named_modules(remove_duplicate=False):
        full = module_name(name)
        if isinstance(mod, nn.Sequential):
            for k, child in mod._modules.items():
                if child is None:
                    raise ValueError(f"etbkernels.bounds: {module_name((name + '.' if name else '') + k)} is None, "
                                     "which nn.Sequential's forward would call; remove the entry")
        for attr, kind in (("_forward_pre_hooks", "forward pre-hook"), ("_forward_hooks", "forward hook")):
            n = len(getattr(mod, attr, None) or ())
            if n:
                raise ValueError(f"etbkernels.bounds: {full} ({type(mod).__name__}) has {n} {kind}(s) registered: a "
                                 "hook can change what the module computes, which the bounds cannot see; remove it "
                                 "(handle.remove()) before computing bounds (backward hooks are fine)")
        for m in _CALL:
            if getattr(type(mod), m) is not getattr(nn.Module, m) or (not m.startswith("__") and m in vars(mod)):
                raise ValueError(f"etbkernels.bounds: {full} ({type(mod).__name__}) overrides {m} of nn.Module, so "
                                 "calling it may compute something other than its forward; the bounds cannot follow it")


def trace(model: nn.Module, example: torch.Tensor) -> Traced:
    """Traces ``model`` (checked by :func:`check_calls`) and finds every node's per-sample shape by
    running the graph on ``example`` (a batch of 2) and on a batch of 3: a node whose shape does
    not keep the batch as its first dimension (e.g. ``x.view(-1)``) is refused."""
    check_calls(model)
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except fx.proxy.TraceError as e:
        raise ValueError(f"etbkernels.bounds: the model's forward cannot be traced{_inside(tracer, model)} ({e})"
                         f"{_trace_site(e)}; the bounds follow a forward whose operations do not depend on the "
                         "input's values") from None
    except (TypeError, AttributeError, NotImplementedError, RuntimeError, ValueError) as e:
        raise ValueError(f"etbkernels.bounds: the model's forward cannot be traced{_inside(tracer, model)}: "
                         f"{type(e).__name__}: {e}{_trace_site(e)}") from None
    where = {n.name: _source_line(n.stack_trace) for n in graph.nodes}
    gm = fx.GraphModule(tracer.root, graph)
    runs = []
    one = example[:1] if example.shape[0] else example.new_zeros((1,) + tuple(example.shape[1:]))
    for batch in (2, 3):
        x = one.detach().expand((batch,) + tuple(example.shape[1:])).clone()
        runs.append(_run_shapes(gm, x, where))
    shapes, values = {}, {}
    constant = set()
    for node in graph.nodes:
        (v2, s2), (v3, _) = runs[0][node.name], runs[1][node.name]
        if node.op == "placeholder" or node.op == "output":
            continue
        if not any(a.name not in constant for a in node.all_input_nodes):
            constant.add(node.name)  # parameters, numbers, and what is computed from them alone
        elif s2 is None and _same(v2, v3):
            constant.add(node.name)  # a shape fact that does not change with the batch, e.g. x.dim()
    for node in graph.nodes:
        (v2, s2), (_, s3) = runs[0][node.name], runs[1][node.name]
        if s2 is None or node.name in constant:  # a number, a size, or a constant read by an operator
            values[node.name] = v2 if s2 is None else None
            shapes[node.name] = None
            continue
        if s2[0] != 2 or s3[0] != 3 or s2[1:] != s3[1:]:
            raise ValueError(f"etbkernels.bounds: {describe(node, where)} does not keep the batch as its first "
                             f"dimension (shape {tuple(s2)} for a batch of 2, {tuple(s3)} for 3); bounds are per "
                             "sample, so every operation must act on each sample on its own")
        shapes[node.name] = tuple(s2[1:])
    return Traced(graph, shapes, values, where, constant)


def _same(a, b) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # values without a plain == (containers of tensors, ...)
        return False


def _inside(tracer: fx.Tracer, model: nn.Module) -> str:
    """`` inside model[1] (MyBlock)``: the innermost module being traced when tracing failed."""
    stack = [k for k in getattr(tracer, "module_stack", {}) if isinstance(k, str) and k]
    if not stack:
        return ""
    try:
        mod = model.get_submodule(stack[-1])
    except AttributeError:
        return ""
    return f" inside {module_name(stack[-1])} ({type(mod).__name__})"


def _trace_site(e: BaseException) -> str:
    tb = e.__traceback__
    site = ""
    while tb is not None:
        f = tb.tb_frame.f_code.co_filename
        if not os.path.abspath(f).startswith((_TORCH_DIR, _NETWORK_DIR)):
            site = f" at {os.path.basename(f)}:{tb.tb_lineno}"
        tb = tb.tb_next
    return site


def _run_shapes(gm: fx.GraphModule, x: torch.Tensor, where) -> Dict[str, Tuple[Any, Optional[torch.Size]]]:
    out: Dict[str, Tuple[Any, Optional[torch.Size]]] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            try:
                v = super().run_node(n)
            except Exception as e:  # a shape error of the model itself, at this node
                ins = [tuple(out[a.name][1][1:]) for a in n.all_input_nodes if out.get(a.name, (0, None))[1] is not None]
                what = describe(n, where)
                if n.op == "call_module":
                    mod = gm.get_submodule(n.target)
                    sizes = ", ".join(f"{k}={getattr(mod, k)}" for k in ("in_features", "in_channels", "num_features")
                                      if hasattr(mod, k))
                    what = f"{module_name(n.target)} ({type(mod).__name__}{', ' + sizes if sizes else ''})"
                msg = str(e).split("\n\nWhile executing")[0].strip().splitlines()[0]
                raise ValueError(f"etbkernels.bounds: {what} fails on its input of per-sample shape "
                                 f"{ins[0] if len(ins) == 1 else ins}: {type(e).__name__}: {msg}") from None
            out[n.name] = (None, v.shape) if isinstance(v, torch.Tensor) else (v, None)
            return v

    # in eval mode: a training-mode BatchNorm would update its running statistics (it is refused
    # later anyway), and Dropout would be random
    training = [(m, m.training) for m in gm.modules()]
    try:
        for m, _ in training:
            m.training = False
        rec = Recorder(gm)
        rec.extra_traceback = False  # our message names the node already
        with torch.no_grad():
            rec.run(x)
    finally:
        for m, t in training:
            m.training = t
    return out


# ------------------------------------------------------------------------------------ cache
_CACHE: "weakref.WeakKeyDictionary[nn.Module, Tuple[tuple, Traced]]" = weakref.WeakKeyDictionary()


def signature(model: nn.Module, example: torch.Tensor) -> tuple:
    """What a cached trace depends on: the module tree (names, objects, types, train/eval modes),
    the identity and shape of every parameter and buffer, and the input's shape, dtype and device.
    Any change (a layer added or swapped, .train()/.eval(), a parameter replaced by a new tensor)
    makes a new trace."""
    mods = tuple((n, id(m), type(m), m.training) for n, m in model.named_modules(remove_duplicate=False))
    tensors = tuple((n, id(t), tuple(t.shape)) for n, t in
                    list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)))
    return mods, tensors, tuple(example.shape[1:]), example.dtype, example.device


def cached_trace(model: nn.Module, example: torch.Tensor) -> Traced:
    """:func:`trace`, cached per model until its :func:`signature` changes. Hooks and global hooks
    are checked on every call (adding a hook does not change the signature)."""
    check_calls(model)
    sig = signature(model, example)
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == sig:
        return hit[1]
    traced = trace(model, example)
    _CACHE[model] = (sig, traced)
    return traced
