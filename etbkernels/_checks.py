"""Input checks shared by the public entry points (block ops and network bounds)."""
from __future__ import annotations

import torch
from torch import Tensor


def require_dense(op: str, name: str, t: Tensor) -> None:
    """Raises TypeError naming ``name`` when ``t`` is sparse (or any non-strided layout): the
    kernels read dense memory, and a sparse tensor would otherwise fail later with a message
    about shapes or dispatch keys that does not say what is wrong."""
    if t.layout != torch.strided:
        raise TypeError(f"{op}: {name} must be a dense (strided) tensor, got layout {t.layout}")
