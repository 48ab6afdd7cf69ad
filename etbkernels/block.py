"""Public block ops: ETB and IBP bounds of an Affine-ReLU-Affine block g(x) = W2 relu(W1 x + b1) + b2.

These wrappers turn user-friendly input (1-D vectors, a scalar or per-feature radius, float16 /
bfloat16, bool masks) into the strict form the compiled ops take, and wrap the result in
:class:`Bounds`. Shape, dtype and device checks with actionable messages live in C++
(csrc/checks.h), so direct calls of ``torch.ops.etbkernels.*`` are just as safe.

Expanded tensor arguments (``t.expand(...)``: elements that overlap in memory) are copied in full
by the kernels; one whose copy would exceed ``etbkernels._checks.MAX_EXPANDED_BYTES`` (1 GiB) is
refused up front with ValueError naming it and the bytes needed.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from ._checks import is_real_number, require_dense, require_not_huge_expanded
from ._ops import ops
from .bounds_type import Bounds

_LOW_PRECISION = (torch.float16, torch.bfloat16)
CENTER_AT = ("linear", "output")


def _prepare(op: str, center, radius, named: dict):
    """Validates types and devices, promotes low precision to float32, lifts 1-D input to a batch of one.

    Returns (center, radius broadcast to center, the named tensors, whether to squeeze the result)."""
    if not isinstance(center, Tensor):
        raise TypeError(f"{op}: center must be a torch.Tensor, got {type(center).__name__}")
    if not center.is_floating_point():
        raise TypeError(f"{op}: center must be a floating-point tensor (float32/float64/float16/bfloat16), "
                        f"got {center.dtype}")
    require_dense(op, "center", center)
    require_not_huge_expanded(op, "center", center)
    for name, t in named.items():
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor or None, got {type(t).__name__}")
        require_dense(op, name, t)
        require_not_huge_expanded(op, name, t)
        if t.device != center.device:
            raise ValueError(f"{op}: all tensors must be on the same device; center is on {center.device} but "
                             f"{name} is on {t.device}")
        if t.dtype != center.dtype:
            raise TypeError(f"{op}: all tensors must have the same dtype; center is {center.dtype} but {name} "
                            f"is {t.dtype} (convert with .to({center.dtype}))")
    if center.dim() not in (1, 2):
        raise ValueError(f"{op}: center must be (n,) or (N, n), got shape {tuple(center.shape)}")
    if isinstance(radius, Tensor):
        require_dense(op, "radius", radius)
        require_not_huge_expanded(op, "radius", radius)
        if radius.device != center.device:
            raise ValueError(f"{op}: all tensors must be on the same device; center is on {center.device} but "
                             f"radius is on {radius.device}")
        if radius.dtype != center.dtype:
            if not radius.is_floating_point():
                raise TypeError(f"{op}: radius must be floating point, got {radius.dtype}")
            raise TypeError(f"{op}: all tensors must have the same dtype; center is {center.dtype} but radius "
                            f"is {radius.dtype}")
    elif is_real_number(radius):  # numpy scalars too
        # in the compute dtype: float16/bfloat16 run in float32, so a small eps must not round first
        radius = torch.tensor(float(radius), dtype=torch.float32 if center.dtype in _LOW_PRECISION else center.dtype,
                              device=center.device)
    else:
        raise TypeError(f"{op}: radius must be a tensor or a number, got {type(radius).__name__}")
    try:
        radius = torch.broadcast_to(radius, center.shape)
    except RuntimeError:
        raise ValueError(f"{op}: radius of shape {tuple(radius.shape)} does not broadcast to the shape of center "
                         f"{tuple(center.shape)}") from None
    squeeze = center.dim() == 1
    if squeeze:
        center, radius = center.unsqueeze(0), radius.unsqueeze(0)
    if center.dtype in _LOW_PRECISION:  # float32 accumulation; results are cast back to the input dtype
        center, radius = center.float(), radius.float()
        named = {k: (None if v is None else v.float()) for k, v in named.items()}
    return center, radius, named, squeeze


def _finish(center: Tensor, radius: Tensor, squeeze: bool, dtype) -> Bounds:
    if squeeze:
        center, radius = center.squeeze(0), radius.squeeze(0)
    return Bounds.from_center_radius(center.to(dtype), radius.to(dtype))


def etb_block(center: Tensor, radius: Union[Tensor, float], w1: Tensor, b1: Optional[Tensor], w2: Tensor,
              b2: Optional[Tensor] = None, *, mask: Optional[Tensor] = None, center_at: str = "linear") -> Bounds:
    """Expected Tight Bounds of ``g(x) = w2 @ relu(w1 @ x + b1) + b2`` for x in ``[center - radius, center + radius]``.

    ETB linearizes the block with the mask ``s = 1[c1 + |w1| r > 0]`` (the ReLUs that can be active
    in the box; ``c1 = w1 @ center + b1``) and returns ``center' = w2 (s * c1) + b2`` and
    ``radius' = |w2 diag(s) w1| r``, computed per sample by a fused kernel that never stores the
    product (see docs/math.md, "The ETB block").

    **ETB bounds are expected bounds, not certificates**: they hold in expectation over random
    weights, not for every network. Use :func:`ibp_block` (sound) for verified statements.

    Args:
        center: (N, n) or (n,) box centres (float32/float64; float16/bfloat16 run in float32 and are
            returned in the input dtype).
        radius: box half-widths >= 0: a tensor broadcastable to ``center`` (e.g. a per-feature (n,)
            vector) or a number such as an L-inf eps. A negative entry raises ValueError; NaN
            propagates to the bounds as NaN.
        w1, b1: first affine layer in ``nn.Linear`` layout, (h, n) and (h,) or None.
        w2, b2: second affine layer, (m, h) and (m,) or None.
        mask: optional (N, h) (or (h,) for 1-D centre) bool / 0-1 tensor replacing the ETB mask,
            e.g. from an earlier stage's bounds. No gradient flows through it.
        center_at: ``"linear"`` (default): centre on the linearization ``w2 (s * c1) + b2``;
            ``"output"``: centre on the block's real output at the centre, ``w2 relu(c1) + b2``
            (what the ETB authors' training loss uses). Same radius either way.

    Returns:
        :class:`Bounds` ``(lower, upper)`` of shape (N, m) (or (m,)), with ``.center``, ``.radius``.
        Differentiable in centre, radius, weights and biases. NaN in any input gives NaN bounds in
        the outputs it reaches; an infinite radius gives infinite (or NaN where 0 * inf) radii.

    Example:
        >>> lin1, lin2 = torch.nn.Linear(784, 256), torch.nn.Linear(256, 10)
        >>> x = torch.rand(32, 784)
        >>> b = etb_block(x, 0.01, lin1.weight, lin1.bias, lin2.weight, lin2.bias)
        >>> lower, upper = b
    """
    if center_at not in CENTER_AT:
        raise ValueError(f"etb_block: center_at must be one of {CENTER_AT}, got {center_at!r}")
    dtype = center.dtype if isinstance(center, Tensor) else None
    c, r, t, squeeze = _prepare("etb_block", center, radius, {"w1": w1, "b1": b1, "w2": w2, "b2": b2})
    if mask is not None:
        if not isinstance(mask, Tensor):
            raise TypeError(f"etb_block: mask must be a torch.Tensor or None, got {type(mask).__name__}")
        require_dense("etb_block", "mask", mask)
        require_not_huge_expanded("etb_block", "mask", mask)
        if mask.device != c.device:
            raise ValueError(f"etb_block: mask must be on {c.device} like center, got {mask.device}")
        if squeeze and mask.dim() == 1:
            mask = mask.unsqueeze(0)
    out_c, out_r, _ = ops.etb_block(c, r, t["w1"], t["b1"], t["w2"], t["b2"], mask, center_at == "output")
    return _finish(out_c, out_r, squeeze, dtype)


def ibp_block(center: Tensor, radius: Union[Tensor, float], w1: Tensor, b1: Optional[Tensor], w2: Tensor,
              b2: Optional[Tensor] = None) -> Bounds:
    """Interval Bound Propagation through ``g(x) = w2 @ relu(w1 @ x + b1) + b2``: the sound baseline.

    Same arguments and return type as :func:`etb_block` (without ``mask``/``center_at``). Every
    ``g(x)`` with x in the box lies in ``[lower, upper]`` up to floating-point rounding (compute in
    float64 when that last ulp matters).
    """
    dtype = center.dtype if isinstance(center, Tensor) else None
    c, r, t, squeeze = _prepare("ibp_block", center, radius, {"w1": w1, "b1": b1, "w2": w2, "b2": b2})
    out_c, out_r = ops.ibp_block(c, r, t["w1"], t["b1"], t["w2"], t["b2"])
    return _finish(out_c, out_r, squeeze, dtype)
