"""Rows pulled back through a chain's stages (ETB's ``mask="ibp"``, CROWN-IBP, full CROWN): the rows
to start from, how many go through one call, and one stage's transpose."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .parse import Network

#: Images (samples x spec rows) per backward call: see :func:`row_group`.
BACKWARD_IMAGES = 512


def output_rows(net: Network, N: int, dtype, device, spec: Optional[Tensor] = None) -> Tensor:
    """The rows pulled back from the output, (N, K, *out_shape): the identity, or the spec's rows."""
    out_dim = tuple(net.out_shape)
    if spec is None:
        m = math.prod(out_dim)
        rows = torch.eye(m, dtype=dtype, device=device).expand(N, m, m)
    else:
        rows = spec.expand(N, -1, -1) if spec.dim() == 2 else spec
    return rows.reshape((N, rows.shape[1]) + out_dim)


def row_group(net: Network, N: int, K: int, images: Optional[int] = None) -> int:
    """Rows per backward call: for convolutional nets about ``images`` (default
    ``BACKWARD_IMAGES``) images (samples x rows) per transposed convolution (oneDNN: medium CNN, N = 256, 2 cores: 0.69 s in groups of
    256 or 512 images, 0.96 s in one batch of 2560); dense nets keep all rows in one matmul."""
    if any(op.channels_last for stage in net.stages for op in stage):
        return max(1, (BACKWARD_IMAGES if images is None else images) // max(N, 1))
    return max(K, 1)


def channels_last_like_rows(t: Tensor) -> Tensor:
    """A per-neuron tensor (N, C, H, W) in the channels-last order of rows pulled back through a
    convolution (:func:`pull_back_stage`), so elementwise products with them keep one layout."""
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def pull_back_stage(stage, lam: Tensor) -> Tuple[Tensor, bool]:
    """Rows ``lam`` (N, K, *stage out_shape) times the stage's linear part: (N, K, *stage in_shape).

    Also says whether the result is a new tensor (every op but Flatten makes one; a Flatten-only
    stage returns a view of ``lam``), so a caller knows when it may write in place."""
    N, K = lam.shape[0], lam.shape[1]
    owned = False
    for i, op in enumerate(reversed(stage)):
        if i == 0 and op.dense_weight() is not None and lam.dim() == 3:
            lam = torch.matmul(lam, op.dense_weight())  # (N, K, out) @ (out, in)
        else:
            lam4 = lam.reshape((N * K,) + tuple(op.out_shape))
            if op.channels_last and lam4.dim() == 4:
                # oneDNN's transposed convolution is up to ~2x faster on channels-last input,
                # and its output stays channels-last: convert once, at the first conv.
                lam4 = lam4.contiguous(memory_format=torch.channels_last)
            lam = op.transpose(lam4)
            lam = lam.reshape((N, K) + tuple(op.in_shape))
        owned = owned or not op.is_reshape
    return lam, owned
