"""Full CROWN's rows for the neurons of a convolutional layer, pulled back on their windows only.

The row ``e_i`` of neuron (c, y, x) of a conv layer is nonzero, after the pull-back through the
layers before it, only on that neuron's receptive field: a few positions of each earlier grid.
Pulling the rows back as whole images (:func:`.crown.upper_bounds`) costs a full transposed
convolution per row, almost all of it on zeros. Here the rows of one output position (all or some
of its channels) are kept on the window they can be nonzero on:

    a transposed convolution (stride s, padding p, dilation d, kernel k) maps a window
    [y0, y0 + h) of its output grid onto [y0 s - p, (y0 + h - 1) s - p + d (k - 1) + 1) of its
    input grid, cut to the grid (the rest falls on the zero padding, which has no neuron);

and each ReLU's relaxation, each stage's bias and finally the box's centre and radius are read on
the same window. The values are exactly those of the dense pull-back. Used when every op before
the layer maps windows to windows (Conv2d, AvgPool2d, per-channel affine maps).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from .._progress import progress
from .layers import AvgPoolOp, ChannelAffineOp, ConvOp
from .parse import Network
from .patches import _tap_matmul

#: False: dense rows everywhere (for the A/B benchmark bench/crown_full.py).
ENABLED = True
#: Numbers in the largest tensor of one call (samples x rows x window), about a last-level cache.
WINDOW_CALL_NUMEL = 1 << 22
#: A progress bar is shown (on a terminal) past this many calls.
PROGRESS_CALLS = 200

Window = Tuple[int, int]  # the window's first row and column in the current grid


def applies(net: Network) -> bool:
    """Whether every op of ``net`` maps windows to windows and its output is a (C, H, W) grid."""
    return ENABLED and len(net.out_shape) == 3 and all(isinstance(op, (ConvOp, AvgPoolOp, ChannelAffineOp))
                                           for st in net.stages for op in st)


def _grow(op, shape: Tuple[int, int]) -> Tuple[int, int]:
    """The window size on ``op``'s input grid of a window of ``shape`` on its output grid (uncut)."""
    if isinstance(op, ChannelAffineOp):
        return shape
    conv = op._conv if isinstance(op, AvgPoolOp) else op
    k = conv.weight.shape[2:]
    return tuple((shape[d] - 1) * conv.stride[d] + conv.dilation[d] * (k[d] - 1) + 1 for d in range(2))


def largest_window(net: Network) -> int:
    """Numbers per row of the largest window a pull-back from one output position holds."""
    size, C = (1, 1), net.out_shape[0]
    best = C
    for st in reversed(net.stages):
        for op in reversed(st):
            size = _grow(op, size)
            best = max(best, op.in_shape[0] * min(size[0], op.in_shape[1]) * min(size[1], op.in_shape[2]))
    return best


def transpose_window(op, lam: Tensor, at: Window) -> Tuple[Tensor, Window]:
    """``op``'s transpose of rows ``lam`` (B, h, w, C_out) (channels last) that sit at ``at`` on
    its output grid: (rows (B, h', w', C_in) on the input grid, their window's corner), cut to the
    input grid. One small matmul per kernel tap: oneDNN's transposed convolution is several times
    slower on these tiny images, most of all with one output channel."""
    if isinstance(op, ChannelAffineOp):
        return lam * op.scale.flatten(), at
    conv = op._conv if isinstance(op, AvgPoolOp) else op
    B, h, w, Co = lam.shape
    kh, kw = conv.weight.shape[2:]
    (s0, s1), (d0, d1) = conv.stride, conv.dilation
    Ci = conv.weight.shape[1] * conv.groups
    x = lam.reshape(B * h * w, Co)
    out = lam.new_zeros(B, (h - 1) * s0 + d0 * (kh - 1) + 1, (w - 1) * s1 + d1 * (kw - 1) + 1, Ci)
    for a in range(kh):
        for e in range(kw):
            tap = _tap_matmul(x, conv.weight[:, :, a, e], conv.groups, transpose=True).reshape(B, h, w, Ci)
            out[:, a * d0: a * d0 + s0 * (h - 1) + 1: s0, e * d1: e * d1 + s1 * (w - 1) + 1: s1] += tap
    y0, x0 = at[0] * s0 - conv.padding[0], at[1] * s1 - conv.padding[1]
    H, W = op.in_shape[1:]
    out = out[:, max(0, -y0): H - y0, max(0, -x0): W - x0]
    return out, (max(y0, 0), max(x0, 0))


def _window(t: Tensor, at: Window, hw: Sequence[int]) -> Tensor:
    """``t`` (..., H, W, C) read on the window at ``at`` of size ``hw``."""
    return t[..., at[0]: at[0] + hw[0], at[1]: at[1] + hw[1], :]


def _last(t: Tensor) -> Tensor:
    """(..., C, H, W) as a channels-last view (..., H, W, C)."""
    return t.movedim(-3, -1)


def upper_bounds_window(net: Network, lam: Tensor, at: Window, relax, offsets: List[Tensor],
                        mu: Tensor, r: Tensor) -> Tensor:
    """Upper bounds (N, R) of rows ``lam`` (N, R, h, w, C) (channels last) of the network's output
    that sit at ``at`` on its grid; ``relax`` and ``offsets`` as in :func:`.crown.upper_bounds`."""
    N, R = lam.shape[:2]
    bias = lam.new_zeros(N, R)
    for k in range(len(net.stages) - 1, -1, -1):
        bias = bias + torch.einsum("nrhwc,hwc->nr", lam, _window(_last(offsets[k]), at, lam.shape[2:4]))
        for op in reversed(net.stages[k]):
            lam4, at = transpose_window(op, lam.reshape((N * R,) + lam.shape[2:]), at)
            lam = lam4.reshape((N, R) + lam4.shape[1:])
            if lam.numel() == 0 and N * R:  # the window fell on padding only: the rows end here
                return bias
        if k > 0:
            a_l, d, c_u = (_window(_last(t), at, lam.shape[2:4]).unsqueeze(1) for t in relax[k - 1])
            pos = lam.clamp(min=0)
            bias = bias + (pos * c_u).sum((2, 3, 4))
            lam = torch.addcmul(lam * a_l, pos, d)  # pos a_u + neg a_l
    mu_w, r_w = (_window(_last(t), at, lam.shape[2:4]) for t in (mu, r))
    return torch.einsum("nrhwc,nhwc->nr", lam, mu_w) + torch.einsum("nrhwc,nhwc->nr", lam.abs(), r_w) + bias


def crown_neurons_windowed(net: Network, mu: Tensor, r: Tensor, relax, offsets: List[Tensor],
                           desc: str = "CROWN") -> Tuple[Tensor, Tensor]:
    """Backward CROWN (lower, upper) of every neuron of ``net``'s (C, H, W) output, each
    (N, C, H, W): per output position, a group of channels at a time (:data:`WINDOW_CALL_NUMEL`)."""
    N = mu.shape[0]
    C, H, W = net.out_shape
    per_channel = max(1, 2 * N * largest_window(net))
    g = max(1, min(C, WINDOW_CALL_NUMEL // per_channel))
    calls = [(y, x, c0) for y in range(H) for x in range(W) for c0 in range(0, C, g)]
    lowers, uppers = [], []
    for y, x, c0 in progress(calls, desc=desc, unit="call", leave=False, disable=len(calls) <= PROGRESS_CALLS or None):
        rows = min(g, C - c0)
        eye = torch.zeros(rows, 1, 1, C, dtype=mu.dtype, device=mu.device)
        eye[torch.arange(rows), 0, 0, torch.arange(c0, c0 + rows)] = 1
        lam = torch.cat([eye, -eye]).unsqueeze(0).expand(N, 2 * rows, 1, 1, C)
        up = upper_bounds_window(net, lam, (y, x), relax, offsets, mu, r)
        uppers.append(up[:, :rows])
        lowers.append(-up[:, rows:])
    # calls run position-major, channels inside: reassemble (N, H, W, C) then move channels in
    lower = torch.cat(lowers, 1).reshape(N, H, W, C).permute(0, 3, 1, 2)
    upper = torch.cat(uppers, 1).reshape(N, H, W, C).permute(0, 3, 1, 2)
    return lower, upper
