"""An input-normalization layer that bound propagation understands."""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel (dimension 1), as the first layer of a model.

    Put it in front of a model so that ``etbkernels.bounds(model, x, eps)`` takes the box
    ``x +- eps`` in raw input units (e.g. pixels in [0, 1]) before normalization. Any module
    whose class is named ``Normalize`` and that has ``mean`` and ``std`` attributes (tensors
    or sequences, one value per channel) is treated the same way.

    Args:
        mean, std: per-channel values (sequence or 1-D tensor); ``std`` must be > 0.
    """

    def __init__(self, mean: Union[Sequence[float], Tensor], std: Union[Sequence[float], Tensor]):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.get_default_dtype()).flatten()
        std = torch.as_tensor(std, dtype=torch.get_default_dtype()).flatten()
        if mean.shape != std.shape:
            raise ValueError(f"Normalize: mean {tuple(mean.shape)} and std {tuple(std.shape)} must have one value "
                             "per channel each")
        if not bool((std > 0).all()):
            raise ValueError("Normalize: every std must be > 0")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: Tensor) -> Tensor:
        view = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.reshape(view)) / self.std.reshape(view)
