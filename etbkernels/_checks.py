"""Input checks shared by the public entry points (block ops and network bounds)."""
from __future__ import annotations

import numbers

import torch
from torch import Tensor

#: Most bytes an *expanded* tensor argument (one whose elements overlap in memory, as made by
#: ``.expand`` or ``broadcast_to``) may take once materialized. The kernels and the bound
#: computation need real (dense) tensors, so they copy such an argument in full; past this size
#: it is refused up front, naming the argument and the bytes needed, instead of failing in the
#: allocator after a long copy. Pass ``t.contiguous()`` to make a larger copy deliberately.
MAX_EXPANDED_BYTES = 1 << 30


def require_dense(op: str, name: str, t: Tensor) -> None:
    """Raises TypeError naming ``name`` when ``t`` is sparse (or any non-strided layout): the
    kernels read dense memory, and a sparse tensor would otherwise fail later with a message
    about shapes or dispatch keys that does not say what is wrong."""
    if t.layout != torch.strided:
        raise TypeError(f"{op}: {name} must be a dense (strided) tensor, got layout {t.layout}")


def _human(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def require_not_huge_expanded(op: str, name: str, t: Tensor) -> None:
    """Raises ValueError naming ``name`` when ``t``'s elements overlap in memory (stride-0 or
    otherwise overlapping dimensions) and materializing it would take more than
    :data:`MAX_EXPANDED_BYTES`. Dense tensors of any size pass: their memory already exists."""
    if t.is_contiguous() or t.numel() == 0:  # the common case, one cheap call
        return
    span = 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()))
    need = t.numel() * t.element_size()
    if span < t.numel() and need > MAX_EXPANDED_BYTES:
        raise ValueError(f"{op}: {name} is an expanded tensor (shape {tuple(t.shape)}, strides {tuple(t.stride())}, "
                         f"{_human(span * t.element_size())} in memory); it must be materialized, which would take "
                         f"{_human(need)}, more than the {_human(MAX_EXPANDED_BYTES)} allowed for expanded arguments "
                         f"(etbkernels._checks.MAX_EXPANDED_BYTES); pass {name}.contiguous() to copy it deliberately")


def is_real_number(v) -> bool:
    """A Python or numpy real number (np.float32, np.int64, ...), not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def is_integer(v) -> bool:
    """A Python or numpy integer (np.int64, ...), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)
