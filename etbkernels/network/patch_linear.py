"""``Linear(Flatten(.))`` of a Jacobian in patches form (:mod:`.patches`), written straight into the
input canvas.

Position (h, w) of the last conv layer holds the window ``P[:, :, :, :, h, w]`` of input pixels
``(h S + u, w S + v)``; the Linear columns of that position map it to the outputs, so

    canvas[h S + u, w S + v, n, c0, :] += P[u, v, c0, n, h, w, :] @ Wlin[:, :, h, w]^T.

For one window row u and one column of positions w, the targets of the H positions h are H
disjoint ``(Rw N C0) x out`` blocks of the canvas at a fixed stride, so one ``baddbmm_`` on a
strided view of the canvas adds all of them: the product is accumulated where it belongs. Forming
the (positions x window x out) product first and scattering it (``index_add``) wrote and re-read a
tensor R^2 H W / n times larger than the result, and its backward gathered it again; that made
this step the slowest of ``mask="etb"`` (bench/results/profile_network.md).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def canvas_matmul(P: Tensor, weight: Tensor, S: Tuple[int, int], canvas_hw: Tuple[int, int]) -> Tensor:
    """Every window of P times its position's Linear columns, added on a (Yc, Xc, N, C0, out) canvas of input pixels.

    P: (Rh, Rw, C0, N, H, W, C) patches (full batch); weight: (out, C H W), nn.Linear's layout
    after Flatten; S: the windows' stride; canvas_hw: (Yc, Xc), at least every window's extent.
    """
    return _CanvasMatmul.apply(P, weight, S, canvas_hw)


def _blocks(canvas: Tensor, Rh: int, Rw: int, H: int, W: int, S, NC0: int):
    """(u, w, the (H, Rw NC0, out) strided view of the canvas that window row u of the positions in
    column w covers) for every u, w. ``canvas``: (Yc, Xc NC0, out)."""
    for u in range(Rh):
        rows = canvas[u: u + S[0] * (H - 1) + 1: S[0]]
        for w in range(W):
            yield u, w, rows[:, w * S[1] * NC0: (w * S[1] + Rw) * NC0]


def _position_major(weight: Tensor, C: int, H: int, W: int) -> Tensor:
    """nn.Linear's (out, C H W) weight as (W, H, C, out), contiguous: one (C, out) matrix per position."""
    return weight.reshape(weight.shape[0], C, H, W).permute(3, 2, 1, 0).contiguous()


class _CanvasMatmul(torch.autograd.Function):
    """Forward and backward as one strided ``bmm`` per (window row, column of positions); the backward
    reads the canvas gradient through the same views instead of gathering a large product."""

    @staticmethod
    def forward(ctx, P, weight, S, canvas_hw):
        Rh, Rw, C0, N, H, W, C = P.shape
        out_f = weight.shape[0]
        # (W, Rh, H, Rw N C0, C): the rows each block needs, contiguous
        A = P.permute(5, 0, 4, 1, 3, 2, 6).reshape(W, Rh, H, Rw * N * C0, C)
        w = _position_major(weight, C, H, W)
        Yc, Xc = canvas_hw
        canvas = P.new_zeros(Yc, Xc * N * C0, out_f)
        for u, c, block in _blocks(canvas, Rh, Rw, H, W, S, N * C0):
            block.baddbmm_(A[c, u], w[c])
        # the weight, not its per-chunk copy w: a kept chunk's graph would hold one copy each
        ctx.save_for_backward(A, weight)
        ctx.meta = (P.shape, S)
        return canvas.view(Yc, Xc, N, C0, out_f)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        A, weight = ctx.saved_tensors
        (Rh, Rw, C0, N, H, W, C), S = ctx.meta
        w = _position_major(weight, C, H, W)
        out_f = w.shape[-1]
        g = grad.contiguous().view(grad.shape[0], -1, out_f)
        need_p, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gA = A.new_empty(A.shape) if need_p else None
        gw = torch.zeros_like(w) if need_w else None
        wt = w.transpose(2, 3)
        for u, c, block in _blocks(g, Rh, Rw, H, W, S, N * C0):
            if need_p:
                torch.bmm(block, wt[c], out=gA[c, u])
            if need_w:
                gw[c].baddbmm_(A[c, u].transpose(1, 2), block)
        gP = gA.view(W, Rh, H, Rw, N, C0, C).permute(1, 3, 5, 4, 2, 0, 6) if need_p else None
        gweight = gw.permute(3, 2, 1, 0).reshape(out_f, C * H * W) if need_w else None
        return gP, gweight, None, None
