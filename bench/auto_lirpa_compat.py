"""auto_LiRPA as an optional comparator (benchmarks and cross-check tests), on today's torch and numpy.

auto_LiRPA 0.3 (2022) is the only release on PyPI; its metadata pins torch < 1.13, so it is
installed with ``pip install --no-deps auto_LiRPA==0.3 appdirs`` (scripts/setup.sh does). Its code
runs on torch 2.x once four things it relies on, which torch and numpy have since moved, removed or
changed, are put back; nothing of its own code is changed:

- ``torch.onnx.symbolic_helper._set_opset_version(v)``: now a field of the TorchScript exporter's
  ``GLOBALS`` (auto_LiRPA sets opset 12 before tracing the model);
- ``torch._C.Node.__getitem__``: torch.onnx used to install it (``node[name]`` reads an
  attribute by its kind);
- ``numpy.lib.arraysetops``: a numpy 1.x module path (auto_LiRPA imports ``isin`` from it);
- the ``remove_duplicate`` argument that ``nn.Module.named_parameters`` now passes to
  ``_named_members``, which auto_LiRPA's ``BoundedModule`` overrides with the old signature.

tests/test_auto_lirpa_agreement.py checks that its IBP, CROWN-IBP and CROWN bounds then equal
ours in float64 (to ~1e-15 on the small CNN), so the shims did not change what it computes.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from types import ModuleType


def _restore_names() -> None:
    import numpy
    import torch

    sys.modules.setdefault("numpy.lib.arraysetops", numpy)
    if not hasattr(torch._C.Node, "__getitem__"):
        torch._C.Node.__getitem__ = lambda self, k: getattr(self, self.kindOf(k))(k)
    import torch.onnx.symbolic_helper as helper
    if not hasattr(helper, "_set_opset_version"):
        try:
            from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
        except ImportError:  # torch 2.0-2.8 kept GLOBALS here
            from torch.onnx._globals import GLOBALS
        helper._set_opset_version = lambda v: setattr(GLOBALS, "export_onnx_opset_version", v)


def load() -> ModuleType:
    """Imports auto_LiRPA (after restoring the names above). Raises ImportError when it is not
    installed or still does not import; the message says why."""
    if importlib.util.find_spec("auto_LiRPA") is None:
        raise ImportError("auto_LiRPA is not installed (pip install --no-deps auto_LiRPA==0.3 appdirs)")
    _restore_names()
    try:
        lirpa = importlib.import_module("auto_LiRPA")
    except Exception as e:  # noqa: BLE001  (any failure of an optional comparator is reported, not raised)
        raise ImportError(f"auto_LiRPA does not import: {type(e).__name__}: {e}") from e
    cls = lirpa.BoundedModule
    old = cls._named_members
    if "remove_duplicate" not in inspect.signature(old).parameters:
        def _named_members(self, get_members_fn, prefix="", recurse=True, remove_duplicate=True):
            return old(self, get_members_fn, prefix=prefix, recurse=recurse)
        cls._named_members = _named_members
    return lirpa


def _without_dropout(model):
    """A copy of an eval-mode model with each Dropout replaced by the identity it is in eval mode:
    auto_LiRPA 0.3 switches a model with Dropout to training mode before tracing it."""
    import copy

    from torch import nn

    if not any(isinstance(m, nn.Dropout) for m in model.modules()):
        return model
    model = copy.deepcopy(model)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Dropout):
                setattr(parent, name, nn.Identity())
    return model


def lirpa_bounder(model, x, eps: float, clip=None):
    """``fn(method, C=None) -> (lower, upper)``: auto_LiRPA's bounds of model(x') over the L-inf box
    x +- eps (clipped to ``clip``), or of ``C @ model(x')`` for a (N, K, outputs) spec; method "IBP",
    "CROWN-IBP", "CROWN", ... The model is traced once, here (benchmarks time ``fn`` alone)."""
    lirpa = load()
    import torch

    model = _without_dropout(model)
    lo, hi = x - eps, x + eps
    if clip is not None:
        lo, hi = lo.clamp(min=clip[0]), hi.clamp(max=clip[1])
    ptb = lirpa.PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=lo, x_U=hi)
    bm = lirpa.BoundedModule(model, torch.zeros_like(x[:1]), verbose=False)
    bx = lirpa.BoundedTensor(x, ptb)
    return lambda method, C=None: bm.compute_bounds(x=(bx,), method=method, C=C)


def lirpa_bounds(model, x, eps: float, method: str, clip=None, C=None):
    """One call of :func:`lirpa_bounder`."""
    return lirpa_bounder(model, x, eps, clip)(method, C)
