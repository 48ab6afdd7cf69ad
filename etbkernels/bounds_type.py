"""The result type of every bound computation."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch


class _LowerUpper(NamedTuple):
    lower: torch.Tensor
    upper: torch.Tensor


class Bounds(_LowerUpper):
    """Elementwise interval bounds: a named tuple ``(lower, upper)`` with ``.center`` and ``.radius``.

    ``lower, upper = bounds`` unpacks it. ``center`` and ``radius`` are kept as computed (not
    recovered from lower/upper), so a radius far below ``|center|`` keeps its precision; then
    ``lower = center - radius`` and ``upper = center + radius`` (rounded to nearest: a sound
    method's interval can be off by an ulp at each end).

    Build one with ``Bounds.from_center_radius(center, radius)`` or ``Bounds(lower, upper)``.
    """

    def __new__(cls, lower: torch.Tensor, upper: torch.Tensor, center: Optional[torch.Tensor] = None,
                radius: Optional[torch.Tensor] = None):
        return super().__new__(cls, lower, upper)

    def __init__(self, lower, upper, center=None, radius=None):
        self.center = (lower + upper) / 2 if center is None else center
        self.radius = (upper - lower) / 2 if radius is None else radius

    @classmethod
    def from_center_radius(cls, center: torch.Tensor, radius: torch.Tensor) -> "Bounds":
        """Bounds ``[center - radius, center + radius]``, keeping center and radius as given."""
        return cls(center - radius, center + radius, center, radius)

    @property
    def width(self) -> torch.Tensor:
        """``upper - lower`` (= 2 * radius)."""
        return 2 * self.radius

    def __repr__(self) -> str:
        w = self.width.detach().float()
        mean = w.mean().item() if w.numel() else float("nan")
        return f"Bounds(shape={tuple(self.center.shape)}, dtype={self.center.dtype}, mean width={mean:.4g})"
