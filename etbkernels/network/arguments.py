"""Argument checks of ``etbkernels.bounds``: each refuses bad input with a message naming the argument."""
from __future__ import annotations

import math
from typing import List, Optional

import torch
from torch import Tensor, nn

from .._checks import is_integer, is_real_number, require_dense, require_not_huge_expanded
from .layers import numel
from .parse import Network

METHODS = ("etb", "ibp", "crown-ibp", "crown-forward", "crown")
MASKS = ("etb", "ibp")
CENTER_AT = ("output", "linear")


def check_options(method, mask, center_at, chunk_size):
    """Validates the method options; returns (mask, center_at) with their defaults filled in."""
    if method not in METHODS:
        raise ValueError(f"bounds: method must be one of {METHODS}, got {method!r}")
    if method != "etb" and (mask is not None or center_at is not None):
        raise ValueError("bounds: mask and center_at apply to method='etb' only")
    mask = "etb" if mask is None else mask
    center_at = "output" if center_at is None else center_at
    if center_at not in CENTER_AT:
        raise ValueError(f"bounds: center_at must be one of {CENTER_AT}, got {center_at!r}")
    if isinstance(mask, str) and mask not in MASKS:
        raise ValueError(f"bounds: mask must be one of {MASKS} or a list of tensors, got {mask!r}")
    if chunk_size is not None and (not is_integer(chunk_size) or chunk_size < 1):  # np.int64 too
        raise ValueError(f"bounds: chunk_size must be None or an int >= 1, got {chunk_size!r}")
    return mask, center_at


def check_x(x) -> Tensor:
    """``x`` if it is a dense, batched float32/float64 tensor that is not a huge expanded one."""
    if not isinstance(x, Tensor):
        raise TypeError(f"bounds: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"bounds: x must be float32 or float64, got {x.dtype}")
    require_dense("bounds", "x", x)
    require_not_huge_expanded("bounds", "x", x)
    if x.dim() < 2:
        raise ValueError(f"bounds: x must be batched, (N, *input shape), got shape {tuple(x.shape)}; "
                         "use x.unsqueeze(0) for one sample")
    return x


def _clip_end(x: Tensor, v, i: int) -> Tensor:
    """clip[i] as a tensor of x's dtype broadcast to x's shape; refused by name if it is not a
    number or a real tensor broadcastable to x, or holds NaN."""
    name = f"clip[{i}] ({('low', 'high')[i]})"
    if isinstance(v, Tensor):
        v = _like_x(x, name, v, lambda t: t.is_complex() or t.dtype == torch.bool, "a real tensor or a number")
        if bool(v.detach().isnan().any()):
            raise ValueError(f"bounds: {name} holds NaN")
        return v
    if is_real_number(v):  # numpy scalars too
        if math.isnan(v):
            raise ValueError(f"bounds: {name} is NaN")
        return torch.tensor(float(v), dtype=x.dtype, device=x.device).expand(x.shape)
    raise TypeError(f"bounds: {name} must be a number or a tensor, got {type(v).__name__}"
                    + (" (use -math.inf or math.inf for no bound)" if v is None else ""))


def _like_x(x: Tensor, name: str, v: Tensor, bad_dtype, want: str) -> Tensor:
    """Tensor argument ``v`` checked (dense, not a huge expanded view, dtype, device) and broadcast to x."""
    require_dense("bounds", name, v)
    require_not_huge_expanded("bounds", name, v)
    if bad_dtype(v):
        raise TypeError(f"bounds: {name} must be {want}, got {v.dtype}")
    if v.device != x.device:
        raise ValueError(f"bounds: {name} is on {v.device} but x is on {x.device}")
    try:
        return torch.broadcast_to(v.to(x.dtype), x.shape)
    except RuntimeError:
        raise ValueError(f"bounds: {name} of shape {tuple(v.shape)} does not broadcast to x of shape "
                         f"{tuple(x.shape)}") from None


def _at(t: Tensor, idx) -> str:
    return f"{t[idx].item():g}"


def box(x: Tensor, eps, clip):
    """(centre, radius) of the box ``x +- eps`` intersected with ``clip``; eps and clip refused by name."""
    if is_real_number(eps):  # numpy scalars too (np.float32 is no float subclass)
        if not eps >= 0:
            raise ValueError(f"bounds: eps must be >= 0, got {eps}")
        eps_t = torch.full_like(x, float(eps))
    elif isinstance(eps, Tensor):
        eps_t = _like_x(x, "eps", eps, lambda t: not t.is_floating_point(), "a floating-point tensor or a number")
        if bool((eps_t.detach() < 0).any()):
            raise ValueError("bounds: eps must be >= 0 everywhere")
    else:
        raise TypeError(f"bounds: eps must be a number or a tensor, got {type(eps).__name__}")
    if clip is None:
        return x, eps_t
    if not (isinstance(clip, (tuple, list)) and len(clip) == 2):
        raise ValueError(f"bounds: clip must be a (low, high) pair, got {clip!r}")
    low, high = _clip_end(x, clip[0], 0), _clip_end(x, clip[1], 1)
    per_element = isinstance(clip[0], Tensor) or isinstance(clip[1], Tensor)
    # two numbers: compare them, not x-sized tensors (BoundedModel passes clip on every training step)
    if per_element:
        reversed_ = (low > high).detach()
        idx = tuple(reversed_.nonzero()[0].tolist()) if bool(reversed_.any()) else None
        where = None if idx is None else (_at(low, idx), _at(high, idx), f" at x{list(idx)}")
    else:
        where = (f"{float(clip[0]):g}", f"{float(clip[1]):g}", "") if float(clip[0]) > float(clip[1]) else None
    if where is not None:
        raise ValueError(f"bounds: clip is reversed: low {where[0]} > high {where[1]}{where[2]}, so the clipped box "
                         "is empty somewhere whatever x is; clip is (low, high)")
    lo, hi = torch.maximum(x - eps_t, low), torch.minimum(x + eps_t, high)
    empty = (lo.detach() > hi.detach())
    if bool(empty.any()):
        idx = tuple(empty.nonzero()[0].tolist())
        raise ValueError(f"bounds: the clipped box is empty somewhere: x{list(idx)} = {_at(x, idx)} lies outside clip "
                         f"[{_at(low, idx)}, {_at(high, idx)}] by more than eps ({_at(eps_t, idx)})")
    return (lo + hi) / 2, (hi - lo) / 2


def check_params(model: nn.Module, x: Tensor) -> None:
    """Every floating parameter and buffer has x's dtype and device (and none is a huge expanded tensor)."""
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        require_not_huge_expanded("bounds", f"model parameter {name}", p)
        if p.is_floating_point() and (p.dtype != x.dtype or p.device != x.device):
            raise TypeError(f"bounds: model parameter {name} is {p.dtype} on {p.device} but x is {x.dtype} on "
                            f"{x.device}; convert one of them (e.g. model.to(x.dtype))")


def check_spec(spec, net: Network, x: Tensor) -> Optional[Tensor]:
    """``spec`` in x's dtype if it is None or a real (K, out) / (N, K, out) tensor on x's device."""
    if spec is None:
        return None
    if not isinstance(spec, Tensor):
        raise TypeError(f"bounds: spec must be a tensor or None, got {type(spec).__name__}")
    require_dense("bounds", "spec", spec)
    require_not_huge_expanded("bounds", "spec", spec)
    if spec.is_complex() or spec.dtype == torch.bool:
        raise TypeError(f"bounds: spec must be a real (floating-point or integer) tensor, got {spec.dtype}")
    if spec.device != x.device:
        raise ValueError(f"bounds: spec is on {spec.device} but x is on {x.device}")
    out = numel(net.out_shape)
    ok = spec.dim() == 2 and spec.shape[1] == out or spec.dim() == 3 and spec.shape[0] == x.shape[0] \
        and spec.shape[2] == out
    if not ok:
        raise ValueError(f"bounds: spec must be (N={x.shape[0]}, K, {out}) or (K, {out}) for a model with {out} "
                         f"outputs, got shape {tuple(spec.shape)}")
    if net.relu_last:
        raise ValueError("bounds: spec needs an affine last layer, but the model ends with a ReLU")
    return spec.to(x.dtype)


def check_masks(masks, net: Network, mu: Tensor) -> List[Tensor]:
    """Given ETB masks as 0/1 tensors of mu's dtype, one (N, *pre-activation shape) per ReLU."""
    shapes = net.stage_shapes()[:-1]
    if not isinstance(masks, (list, tuple)) or len(masks) != len(shapes):
        raise ValueError(f"bounds: mask must be 'etb', 'ibp' or a list of {len(shapes)} tensors (one per ReLU)")
    out = []
    for i, (m, shp) in enumerate(zip(masks, shapes)):
        want = (mu.shape[0],) + tuple(shp)
        if not isinstance(m, Tensor) or tuple(m.shape) != want:
            raise ValueError(f"bounds: mask[{i}] must be a tensor of shape {want}, got "
                             f"{tuple(getattr(m, 'shape', ())) or type(m).__name__}")
        require_dense("bounds", f"mask[{i}]", m)
        require_not_huge_expanded("bounds", f"mask[{i}]", m)
        if m.is_complex():
            raise TypeError(f"bounds: mask[{i}] must be bool or real, got {m.dtype}")
        if m.device != mu.device:
            raise ValueError(f"bounds: mask[{i}] is on {m.device} but x is on {mu.device}")
        m = m.detach().to(mu.dtype)
        # a fractional or NaN entry would scale a unit instead of switching it: not a mask
        if bool(((m != 0) & (m != 1)).any()):
            raise ValueError(f"bounds: mask[{i}] must hold only 0 and 1 (or be bool); it has other values (or NaN)")
        out.append(m)
    return out
