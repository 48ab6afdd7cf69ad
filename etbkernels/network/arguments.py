"""Argument checks of ``etbkernels.bounds``: each refuses bad input with a message naming the argument."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor, nn

from .._checks import require_dense
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
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"bounds: chunk_size must be None or an int >= 1, got {chunk_size!r}")
    return mask, center_at


def check_x(x) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"bounds: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"bounds: x must be float32 or float64, got {x.dtype}")
    require_dense("bounds", "x", x)
    if x.dim() < 2:
        raise ValueError(f"bounds: x must be batched, (N, *input shape), got shape {tuple(x.shape)}; "
                         "use x.unsqueeze(0) for one sample")
    return x


def box(x: Tensor, eps, clip):
    if isinstance(eps, (int, float)) and not isinstance(eps, bool):
        if not eps >= 0:
            raise ValueError(f"bounds: eps must be >= 0, got {eps}")
        eps_t = torch.full_like(x, float(eps))
    elif isinstance(eps, Tensor):
        require_dense("bounds", "eps", eps)
        if not eps.is_floating_point():
            raise TypeError(f"bounds: eps must be a floating-point tensor or a number, got {eps.dtype}")
        if eps.device != x.device:
            raise ValueError(f"bounds: eps is on {eps.device} but x is on {x.device}")
        try:
            eps_t = torch.broadcast_to(eps.to(x.dtype), x.shape)
        except RuntimeError:
            raise ValueError(f"bounds: eps of shape {tuple(eps.shape)} does not broadcast to x of shape "
                             f"{tuple(x.shape)}") from None
        if bool((eps_t.detach() < 0).any()):
            raise ValueError("bounds: eps must be >= 0 everywhere")
    else:
        raise TypeError(f"bounds: eps must be a number or a tensor, got {type(eps).__name__}")
    if clip is None:
        return x, eps_t
    if not (isinstance(clip, (tuple, list)) and len(clip) == 2):
        raise ValueError(f"bounds: clip must be a (low, high) pair, got {clip!r}")
    lo, hi = x - eps_t, x + eps_t
    lo = torch.maximum(lo, torch.as_tensor(clip[0], dtype=x.dtype, device=x.device))
    hi = torch.minimum(hi, torch.as_tensor(clip[1], dtype=x.dtype, device=x.device))
    if bool((lo.detach() > hi.detach()).any()):
        raise ValueError("bounds: the clipped box is empty somewhere (x outside the clip range by more than eps)")
    return (lo + hi) / 2, (hi - lo) / 2


def check_params(model: nn.Module, x: Tensor) -> None:
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if p.is_floating_point() and (p.dtype != x.dtype or p.device != x.device):
            raise TypeError(f"bounds: model parameter {name} is {p.dtype} on {p.device} but x is {x.dtype} on "
                            f"{x.device}; convert one of them (e.g. model.to(x.dtype))")


def check_spec(spec, net: Network, x: Tensor) -> Optional[Tensor]:
    if spec is None:
        return None
    if not isinstance(spec, Tensor):
        raise TypeError(f"bounds: spec must be a tensor or None, got {type(spec).__name__}")
    require_dense("bounds", "spec", spec)
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
