"""Full CROWN's rows for the neurons of a convolutional layer, pulled back on their windows only.

The row ``e_i`` of neuron (c, y, x) of a conv layer is nonzero, after the pull-back through the
layers before it, only on that neuron's receptive field: a few positions of each earlier grid.
Pulling the rows back as whole images (:func:`.crown.upper_bounds`) costs a full transposed
convolution per row, almost all of it on zeros. Here each row is kept on the window it can be
nonzero on:

    a transposed convolution (stride s, padding p, dilation d, kernel k) maps a window
    [y0, y0 + h) of its output grid onto [y0 s - p, y0 s - p + (h - 1) s + d (k - 1) + 1) of its
    input grid;

the part of a window outside the grid falls on the zero padding, which has no neuron: it is
zeroed after every op. Every output position's window has the same size on every grid, only its
corner differs, so a block of positions goes through each op together (one small matmul per
kernel tap on window-local coordinates), and each ReLU's relaxation, each stage's bias and finally
the box's centre and radius are gathered on every position's own window. The values are exactly
those of the dense pull-back. Used when every op before the layer maps windows to windows
(Conv2d, AvgPool2d, per-channel affine maps).
"""
from __future__ import annotations

import math
from typing import List, Tuple

import torch
from torch import Tensor

from .._progress import progress
from .crown_ibp import signed_unit_rows
from .parse import Network
from .patches import tap_matmul

#: Numbers in the largest tensor of one call (samples x positions x rows x window), about a
#: last-level cache.
WINDOW_CALL_NUMEL = 1 << 22
#: A progress bar is shown (on a terminal) past this many pull-back calls for one layer (here and
#: in :func:`.crown_full.crown_neurons`).
PROGRESS_CALLS = 200


def applies(net: Network) -> bool:
    """Whether every op of ``net`` maps windows to windows and its output is a (C, H, W) grid."""
    return net.options.conv_windows and len(net.out_shape) == 3 and all(op.keeps_windows()
                                                                        for st in net.stages for op in st)


def _grow(op, shape: Tuple[int, int]) -> Tuple[int, int]:
    """The window size on ``op``'s input grid of a window of ``shape`` on its output grid."""
    conv = op.window_conv()
    if conv is None:  # a per-channel scale
        return shape
    k = conv.weight.shape[2:]
    return tuple((shape[d] - 1) * conv.stride[d] + conv.dilation[d] * (k[d] - 1) + 1 for d in range(2))


def largest_window(net: Network) -> int:
    """Numbers per row of the largest window a pull-back from one output position holds."""
    size, best = (1, 1), net.out_shape[0]
    for st in reversed(net.stages):
        for op in reversed(st):
            size = _grow(op, size)
            best = max(best, op.in_shape[0] * size[0] * size[1])
    return best


class _Windows:
    """The corners (Pb,) x 2 of a block of positions' windows on the current grid, and their size."""

    def __init__(self, ys: Tensor, xs: Tensor):
        self.y0, self.x0, self.size = ys, xs, (1, 1)

    def through(self, op) -> None:
        """Moves the windows to ``op``'s input grid."""
        conv = op.window_conv()
        if conv is None:  # a per-channel scale
            return
        self.size = _grow(op, self.size)
        self.y0 = self.y0 * conv.stride[0] - conv.padding[0]
        self.x0 = self.x0 * conv.stride[1] - conv.padding[1]

    def _index(self):
        """Grid rows (Pb, h) and columns (Pb, w) of every window entry (off the grid included)."""
        iy = self.y0[:, None] + torch.arange(self.size[0], device=self.y0.device)  # (Pb, h)
        ix = self.x0[:, None] + torch.arange(self.size[1], device=self.x0.device)
        return iy, ix

    def all_inside(self, H: int, W: int) -> bool:
        """Whether every window lies on the H x W grid."""
        return bool(self.y0.min() >= 0) and bool(self.x0.min() >= 0) and \
            bool(self.y0.max() + self.size[0] <= H) and bool(self.x0.max() + self.size[1] <= W)

    def inside(self, H: int, W: int, dtype) -> Tensor:
        """(Pb, h, w, 1): 1 where a window entry lies on the H x W grid, 0 on the padding."""
        iy, ix = self._index()
        vy, vx = (iy >= 0) & (iy < H), (ix >= 0) & (ix < W)
        return (vy[:, :, None] & vx[:, None, :]).to(dtype).unsqueeze(-1)

    def gather(self, t: Tensor) -> Tensor:
        """``t`` (..., H, W, C) read on every window: (..., Pb, h, w, C); entries off the grid hold
        an edge value (the rows are zero there)."""
        H, W = t.shape[-3:-1]
        iy, ix = self._index()
        iy, ix = iy.clamp(0, H - 1), ix.clamp(0, W - 1)
        return t[..., iy[:, :, None], ix[:, None, :], :]


def _transpose(op, lam: Tensor, win: _Windows) -> Tensor:
    """``op``'s transpose of rows ``lam`` (B, Pb, R, h, w, C_out) on the windows ``win`` (moved to
    the input grid here): (B, Pb, R, h', w', C_in), zero off the input grid."""
    conv = op.window_conv()
    if conv is None:  # a per-channel scale
        return lam * op.channel_scale()
    lead, (h, w, Co) = lam.shape[:3], lam.shape[3:]
    kh, kw = conv.weight.shape[2:]
    (s0, s1), (d0, d1) = conv.stride, conv.dilation
    Ci = conv.weight.shape[1] * conv.groups
    win.through(op)
    x = lam.reshape(-1, Co)
    out = lam.new_zeros((math.prod(lead),) + win.size + (Ci,))
    for a in range(kh):
        for e in range(kw):
            tap = tap_matmul(x, conv.weight[:, :, a, e], conv.groups, transpose=True).reshape(-1, h, w, Ci)
            out[:, a * d0: a * d0 + s0 * (h - 1) + 1: s0, e * d1: e * d1 + s1 * (w - 1) + 1: s1] += tap
    out = out.reshape(lead + win.size + (Ci,))
    if win.all_inside(*op.in_shape[1:]):
        return out
    return out * win.inside(*op.in_shape[1:], lam.dtype).unsqueeze(1)


def _last(t: Tensor) -> Tensor:
    """(..., C, H, W) as a channels-last view (..., H, W, C)."""
    return t.movedim(-3, -1)


def upper_bounds_windows(net: Network, lam: Tensor, win: _Windows, relax, offsets: List[Tensor],
                         mu: Tensor, r: Tensor) -> Tensor:
    """Upper bounds (N, Pb, R) of rows ``lam`` (N, Pb, R, 1, 1, C) (channels last) of the network's
    output, one block of positions ``win``; ``relax`` and ``offsets`` as in :func:`.crown.upper_bounds`."""
    N, Pb, R = lam.shape[:3]
    bias = lam.new_zeros(N, Pb, R)
    for k in range(len(net.stages) - 1, -1, -1):
        bias = bias + torch.einsum("nprhwc,phwc->npr", lam, win.gather(_last(offsets[k])))
        for op in reversed(net.stages[k]):
            lam = _transpose(op, lam, win)
        if k > 0:
            a_l, d, c_u = (win.gather(_last(t)).unsqueeze(2) for t in relax[k - 1])
            pos = lam.clamp(min=0)
            bias = bias + (pos * c_u).sum((3, 4, 5))
            lam = torch.addcmul(lam * a_l, pos, d)  # pos a_u + neg a_l
    mu_w, r_w = win.gather(_last(mu)), win.gather(_last(r))
    return torch.einsum("nprhwc,nphwc->npr", lam, mu_w) + torch.einsum("nprhwc,nphwc->npr", lam.abs(), r_w) + bias


def crown_neurons_windowed(net: Network, mu: Tensor, r: Tensor, relax, offsets: List[Tensor],
                           desc: str = "CROWN") -> Tuple[Tensor, Tensor]:
    """Backward CROWN (lower, upper) of every neuron of ``net``'s (C, H, W) output, each
    (N, C, H, W): blocks of output positions and groups of channels of about
    :data:`WINDOW_CALL_NUMEL` numbers per call."""
    N = mu.shape[0]
    C, H, W = net.out_shape
    per_row = max(1, 2 * N * largest_window(net))
    g = max(1, min(C, WINDOW_CALL_NUMEL // per_row))
    Pb = max(1, min(H * W, WINDOW_CALL_NUMEL // (per_row * g)))
    pos = torch.arange(H * W, device=mu.device)
    calls = [(p0, c0) for p0 in range(0, H * W, Pb) for c0 in range(0, C, g)]
    lowers, uppers = [], []
    for p0, c0 in progress(calls, desc=desc, unit="call", leave=False, disable=len(calls) <= PROGRESS_CALLS or None):
        block, rows = pos[p0:p0 + Pb], min(g, C - c0)
        lam = signed_unit_rows(c0, rows, C, mu.dtype, mu.device).reshape(1, 1, 2 * rows, 1, 1, C)
        lam = lam.expand(N, len(block), 2 * rows, 1, 1, C)
        up = upper_bounds_windows(net, lam, _Windows(block // W, block % W), relax, offsets, mu, r)
        uppers.append(up[:, :, :rows])
        lowers.append(-up[:, :, rows:])
    # calls run block-major, channel groups inside: (N, positions, C), then the layer layout
    groups = -(-C // g)

    def assemble(parts):
        blocks = [torch.cat(parts[i:i + groups], 2) for i in range(0, len(parts), groups)]
        return torch.cat(blocks, 1).reshape(N, H, W, C).permute(0, 3, 1, 2)
    return assemble(lowers), assemble(uppers)
