"""The per-sample Jacobian of a masked conv prefix in *patches* form (forward mode).

Row (c, h, w) of ``J_k`` (one neuron of a convolutional layer) is zero outside that neuron's
receptive field, an ``R x R`` window of the input starting at ``(h * S - pad, w * S - pad)``.
Storing only the windows,

    P[u, v, c0, b, h, w, c] = J_k[b, (c, h, w), (c0, h * S - pad + u, w * S - pad + v)],

costs C_k H_k W_k C0 R^2 numbers per sample instead of C_k H_k W_k n (n = C0 H0 W0), and a
convolution maps patches to patches: for each kernel tap (a, e),

    P'[u + a d S, v + e d S, .., h, w, :] += P[u, v, .., h s + a d, w s + e d, :] @ W[:, :, a, e]^T,

so R' = R + (K - 1) d S, S' = S s, pad' = pad + p S. Early conv layers have small windows, so
this is several times cheaper than pushing all n input directions through them. Channels are
kept last so each tap is one matmul, and the window offsets first, so the rows a tap adds to are
one strided block of P' per window row: the matmul accumulates into P' in place. Only conv-like ops
(Conv2d, per-channel affine, AvgPool2d) run in this form; :func:`to_directions` converts to the
dense form before Flatten/Linear.
"""
from __future__ import annotations

import math

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .patch_linear import canvas_matmul

Patch = Tuple[Tensor, Tuple[int, int], Tuple[int, int]]  # (P, stride S, pad)


def supports(op) -> bool:
    """Whether ``op`` maps patches to patches."""
    return op.keeps_windows()


def identity(in_shape, dtype, device) -> Patch:
    """The input itself: 1 x 1 windows, (1, 1, C0, 1, H0, W0, C0)."""
    C0, H0, W0 = in_shape
    eye = torch.eye(C0, dtype=dtype, device=device).reshape(1, 1, C0, 1, 1, 1, C0)
    return eye.expand(1, 1, C0, 1, H0, W0, C0), (1, 1), (0, 0)


def grown_size(patch: Patch, op) -> int:
    """C0 * R'h * R'w after ``op``: the per-neuron numbers patches would store."""
    P, S, _ = patch
    Rh, Rw, C0 = P.shape[:3]
    conv = op.window_conv()
    if conv is None:  # a per-channel scale
        return C0 * Rh * Rw
    kh, kw = conv.weight.shape[2:]
    return C0 * (Rh + (kh - 1) * conv.dilation[0] * S[0]) * (Rw + (kw - 1) * conv.dilation[1] * S[1])


def apply(patch: Patch, op) -> Patch:
    """``op``'s linear part applied to the patches (see the module docstring)."""
    P, S, pad = patch
    conv = op.window_conv()
    if conv is None:  # a per-channel scale
        return P * op.channel_scale(), S, pad
    out = _PatchConv.apply(P, conv.weight, S, conv.stride, conv.padding, conv.dilation, conv.groups,
                           tuple(conv.out_shape[1:]))
    (s0, s1), (p0, p1) = conv.stride, conv.padding
    return out, (S[0] * s0, S[1] * s1), (pad[0] + p0 * S[0], pad[1] + p1 * S[1])


def _taps(W, S, stride, dilation, out_hw):
    """(a, e, input slices of the padded patches, window slices of the output patches) per tap."""
    kh, kw = W.shape[2:]
    (s0, s1), (d0, d1), (Hn, Wn) = stride, dilation, out_hw
    for a in range(kh):
        for e in range(kw):
            rows = slice(a * d0, a * d0 + s0 * (Hn - 1) + 1, s0)
            cols = slice(e * d1, e * d1 + s1 * (Wn - 1) + 1, s1)
            yield a, e, rows, cols, a * d0 * S[0], e * d1 * S[1]


def tap_matmul(x, w, groups, transpose=False):
    """x (..., C_in) @ w[:, :, a, e]^T per group; ``transpose``: x (..., C_out) @ w (grad wrt input)."""
    Co, Cg = w.shape
    if groups == 1:
        # One 2-D mm on x's rows (copied when x is a strided slice). Not ``x @ w.T``: for a strided
        # x, torch.matmul folds to one mm only when w requires grad; otherwise it runs a bmm of
        # tiny products per leading index, many times slower (a frozen model: bench/micro_network_ops.py).
        y = x.reshape(-1, x.shape[-1]) @ (w if transpose else w.T)
        return y.reshape(x.shape[:-1] + (y.shape[-1],))
    wg = w.reshape(groups, Co // groups, Cg)
    if transpose:
        return torch.einsum("...go,goc->...gc", x.unflatten(-1, (groups, Co // groups)), wg).flatten(-2)
    return torch.einsum("...gc,goc->...go", x.unflatten(-1, (groups, Cg)), wg).flatten(-2)


def _pad_positions(P: Tensor, p0: int, p1: int) -> Tensor:
    return F.pad(P, (0, 0, p1, p1, p0, p0)) if (p0 or p1) else P


def _window_rows(t: Tensor, u0: int, v0: int, Rh: int, Rw: int) -> Tensor:
    """The (Rh, Rw) window block of ``t`` (Rh2, Rw2, ...) at (u0, v0) as (Rh, Rw * rest, C): one
    contiguous matrix per window row (a view)."""
    blk = t[u0:u0 + Rh, v0:v0 + Rw]
    return blk.view(Rh, -1, t.shape[-1])


class _PatchConv(torch.autograd.Function):
    """Conv2d on patches with a hand-written backward: each tap's product is accumulated into the
    output's window rows by ``baddbmm_`` (no product tensor), and the backward reads the gradient
    through the same views, accumulating into one gradient buffer (autograd of the per-tap strided
    slices would allocate a full-size zero gradient per tap)."""

    @staticmethod
    def forward(ctx, P, W, S, stride, padding, dilation, groups, out_hw):
        Pp = _pad_positions(P, *padding)
        Rh, Rw, C0, B = P.shape[:4]
        Co = W.shape[0]
        kh, kw = W.shape[2:]
        Rh2, Rw2 = Rh + (kh - 1) * dilation[0] * S[0], Rw + (kw - 1) * dilation[1] * S[1]
        out = P.new_zeros(Rh2, Rw2, C0, B, out_hw[0], out_hw[1], Co)
        # each tap's (C, Co) matrix contiguous: W[:, :, a, e] has no unit stride, so BLAS copied it
        # for every matrix of the batch
        Wt = W.permute(2, 3, 1, 0).contiguous() if groups == 1 else None
        for a, e, rows, cols, u0, v0 in _taps(W, S, stride, dilation, out_hw):
            x = Pp[:, :, :, :, rows, cols].reshape(Rh, -1, Pp.shape[-1])  # a copy: the positions are strided
            target = _window_rows(out, u0, v0, Rh, Rw)
            if groups == 1:
                target.baddbmm_(x, Wt[a, e].expand(Rh, -1, -1))
            else:
                target += tap_matmul(x, W[:, :, a, e], groups)
        ctx.save_for_backward(P, W)
        ctx.meta = (S, stride, padding, dilation, groups, out_hw)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        P, W = ctx.saved_tensors
        S, stride, (p0, p1), dilation, groups, out_hw = ctx.meta
        Rh, Rw, C0, B, H, Wd, C = P.shape
        need_p, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_out = grad_out.contiguous()
        Pp = _pad_positions(P, p0, p1)
        gPp = torch.zeros_like(Pp) if need_p else None
        gW = torch.zeros_like(W) if need_w else None
        Co, Cg = W.shape[:2]
        Wt = W.permute(2, 3, 0, 1).contiguous() if groups == 1 else None  # (Co, C) per tap, as in forward
        gWt = W.new_zeros(W.shape[2:] + W.shape[:2]) if need_w and groups == 1 else None
        sub = (Rh, Rw, C0, B, out_hw[0], out_hw[1])
        for a, e, rows, cols, u0, v0 in _taps(W, S, stride, dilation, out_hw):
            g = _window_rows(grad_out, u0, v0, Rh, Rw)  # (Rh, Rw rest, Co), a view
            if need_p:
                if groups == 1:
                    gx = torch.bmm(g, Wt[a, e].expand(Rh, -1, -1))
                else:
                    gx = tap_matmul(g, W[:, :, a, e], groups, transpose=True)
                gPp[:, :, :, :, rows, cols] += gx.view(sub + (C,))
            if need_w:
                x = Pp[:, :, :, :, rows, cols].reshape(Rh, -1, C)
                if groups == 1:
                    gWt[a, e] += torch.bmm(g.transpose(1, 2), x).sum(0)
                else:
                    gW[:, :, a, e] += torch.einsum("kmgo,kmgc->goc", g.unflatten(-1, (groups, Co // groups)),
                                                   x.unflatten(-1, (groups, Cg))).reshape(Co, Cg)
        if gWt is not None:
            gW = gWt.permute(2, 3, 0, 1)
        gP = None
        if need_p:
            gP = gPp[:, :, :, :, p0:p0 + H, p1:p1 + Wd] if (p0 or p1) else gPp
        return gP, gW, None, None, None, None, None, None


def _unfold_radius(patch: Patch, r: Tensor) -> Tensor:
    """r in window layout: (Rh, Rw, C0, N, H, W) with r[b, c0, h S - pad + u, w S - pad + v]."""
    P, S, pad = patch
    Rh, Rw, C0, _, H, W = P.shape[:6]
    H0, W0 = r.shape[2:]
    Ht, Wt = (H - 1) * S[0] + Rh, (W - 1) * S[1] + Rw  # the padded extent the windows cover
    # pad, then crop what the windows do not reach: F.pad's own negative amounts would crop the
    # input before padding it and fail where a window lies in the padding only
    rp = F.pad(r, (pad[1], max(0, Wt - W0 - pad[1]), pad[0], max(0, Ht - H0 - pad[0])))[..., :Ht, :Wt]
    ru = F.unfold(rp, (Rh, Rw), stride=S).reshape(r.shape[0], C0, Rh, Rw, H, W)
    return ru.permute(2, 3, 1, 0, 4, 5)


def radius(patch: Patch, r: Tensor) -> Tensor:
    """``|J_k| r`` per neuron, in layer layout (N, C, H, W); r is (N, C0, H0, W0)."""
    P = patch[0]
    N = r.shape[0]
    Rh, Rw, C0, _, H, W, C = P.shape
    A = P.abs()
    if A.shape[3] != N:
        A = A.expand(Rh, Rw, C0, N, H, W, C)
    ru = _unfold_radius(patch, r).reshape(Rh * Rw * C0, N * H * W, 1)
    # the window entries lead, so the sum over them runs over whole contiguous rows
    rad = (A.reshape(Rh * Rw * C0, N * H * W, C) * ru).sum(0)
    return rad.reshape(N, H, W, C).permute(0, 3, 1, 2)


def mask(patch: Patch, s: Tensor, inplace: bool = False) -> Patch:
    """``S_k J_k``: zero the rows of neurons whose mask s (N, C, H, W) is 0.

    ``inplace``: multiply P itself (no new tensor) where P already has the full batch; only for
    a P that nothing else holds and no graph records."""
    P, S, pad = patch
    Rh, Rw, C0, B = P.shape[:4]
    N = s.shape[0]
    # as (window entries, batch, rest): one broadcast dimension (P is contiguous: made by apply, or
    # the identity's expand of batch 1 after a first conv)
    rest = math.prod(P.shape[4:])  # explicit: -1 is ambiguous for an empty batch
    Pv = P.reshape(Rh * Rw * C0, B, rest)
    sv = s.permute(0, 2, 3, 1).reshape(1, N, rest)
    if inplace and B == N:
        return Pv.mul_(sv).view(P.shape), S, pad
    return (Pv * sv).view((Rh, Rw, C0, N) + P.shape[4:]), S, pad


def _canvas_size(patch: Patch, H0: int, W0: int) -> Tuple[int, int]:
    """Rows and columns of a canvas that holds every window and the (padded) input."""
    P, S, pad = patch
    Rh, Rw, _, _, H, W = P.shape[:6]
    return max((H - 1) * S[0] + Rh, pad[0] + H0), max((W - 1) * S[1] + Rw, pad[1] + W0)


def to_directions(patch: Patch, r: Tensor) -> Tensor:
    """Dense ``J_k diag(r)`` in direction-major layout (N, n, C, H, W)."""
    P, S, pad = patch
    N = r.shape[0]
    Rh, Rw, C0, _, H, W, C = P.shape
    if P.shape[3] != N:
        P = P.expand(Rh, Rw, C0, N, H, W, C)
    H0, W0 = r.shape[2:]
    Yc, Xc = _canvas_size(patch, H0, W0)
    h, w, u, v = torch.meshgrid(*(torch.arange(k, device=P.device) for k in (H, W, Rh, Rw)), indexing="ij")
    index = (((h * S[0] + u) * Xc + (w * S[1] + v)) * H + h) * W + w  # canvas (y, x, h, w) per (h, w, u, v)
    src = P.permute(3, 2, 4, 5, 0, 1, 6).reshape(N, C0, H * W * Rh * Rw, C)
    canvas = P.new_zeros(N, C0, Yc * Xc * H * W, C).index_copy(2, index.flatten(), src)
    J = canvas.reshape(N, C0, Yc, Xc, H, W, C)[:, :, pad[0]: pad[0] + H0, pad[1]: pad[1] + W0]
    D = J * r[:, :, :, :, None, None, None]
    return D.reshape(N, C0 * H0 * W0, H, W, C).permute(0, 1, 4, 2, 3)


def flatten_linear_directions(patch: Patch, weight: Tensor, r: Tensor) -> Tensor:
    """Dense ``W J_k diag(r)`` for ``Linear(Flatten(.))`` straight from patches: (N, n, out).

    Each position's (C0, R, R, C) window is contracted with the Linear columns of that position
    (out * C * C0 R^2 per position instead of out * C * n) and added into the input canvas where
    the window lies (:mod:`.patch_linear`).
    """
    P, S, pad = patch
    N = r.shape[0]
    if P.shape[3] != N:
        P = P.expand(P.shape[:3] + (N,) + P.shape[4:])
    C0 = P.shape[2]
    H0, W0 = r.shape[2:]
    canvas = canvas_matmul(P, weight, S, _canvas_size(patch, H0, W0))  # (Yc, Xc, N, C0, out)
    J = canvas[pad[0]: pad[0] + H0, pad[1]: pad[1] + W0].permute(2, 3, 0, 1, 4)
    return (J * r[..., None]).reshape(N, C0 * H0 * W0, weight.shape[0])
