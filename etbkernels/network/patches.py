"""The per-sample Jacobian of a masked conv prefix in *patches* form (forward mode).

Row (c, h, w) of ``J_k`` (one neuron of a convolutional layer) is zero outside that neuron's
receptive field, an ``R x R`` window of the input starting at ``(h * S - pad, w * S - pad)``.
Storing only the windows,

    P[b, h, w, c0, u, v, c] = J_k[b, (c, h, w), (c0, h * S - pad + u, w * S - pad + v)],

costs C_k H_k W_k C0 R^2 numbers per sample instead of C_k H_k W_k n (n = C0 H0 W0), and a
convolution maps patches to patches: for each kernel tap (a, e),

    P'[.., u + a d S, v + e d S, :] += P[.., h s + a d, w s + e d, .., u, v, :] @ W[:, :, a, e]^T,

so R' = R + (K - 1) d S, S' = S s, pad' = pad + p S. Early conv layers have small windows, so
this is several times cheaper than pushing all n input directions through them. Channels are
kept last so each tap is one matmul. Only conv-like ops (Conv2d, per-channel affine, AvgPool2d)
run in this form; :func:`to_directions` converts to the dense form before Flatten/Linear.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


Patch = Tuple[Tensor, Tuple[int, int], Tuple[int, int]]  # (P, stride S, pad)


def supports(op) -> bool:
    """Whether ``op`` maps patches to patches."""
    return op.keeps_windows()


def identity(in_shape, dtype, device) -> Patch:
    """The input itself: 1 x 1 windows, (1, H0, W0, C0, 1, 1, C0)."""
    C0, H0, W0 = in_shape
    eye = torch.eye(C0, dtype=dtype, device=device).reshape(1, 1, 1, C0, 1, 1, C0)
    return eye.expand(1, H0, W0, C0, 1, 1, C0), (1, 1), (0, 0)


def grown_size(patch: Patch, op) -> int:
    """C0 * R'h * R'w after ``op``: the per-neuron numbers patches would store."""
    P, S, _ = patch
    conv = op.window_conv()
    if conv is None:  # a per-channel scale
        return P.shape[3] * P.shape[4] * P.shape[5]
    kh, kw = conv.weight.shape[2:]
    return P.shape[3] * (P.shape[4] + (kh - 1) * conv.dilation[0] * S[0]) * \
        (P.shape[5] + (kw - 1) * conv.dilation[1] * S[1])


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


class _PatchConv(torch.autograd.Function):
    """Conv2d on patches with a hand-written backward: autograd of the per-tap strided slices
    would allocate a full-size zero gradient per tap; this accumulates into one buffer."""

    @staticmethod
    def forward(ctx, P, W, S, stride, padding, dilation, groups, out_hw):
        p0, p1 = padding
        Pp = F.pad(P, (0, 0, 0, 0, 0, 0, 0, 0, p1, p1, p0, p0)) if (p0 or p1) else P
        B, _, _, C0, Rh, Rw, _ = P.shape
        Co = W.shape[0]
        kh, kw = W.shape[2:]
        Rh2, Rw2 = Rh + (kh - 1) * dilation[0] * S[0], Rw + (kw - 1) * dilation[1] * S[1]
        out = P.new_zeros(B, out_hw[0], out_hw[1], C0, Rh2, Rw2, Co)
        for a, e, rows, cols, u0, v0 in _taps(W, S, stride, dilation, out_hw):
            out[:, :, :, :, u0:u0 + Rh, v0:v0 + Rw] += tap_matmul(Pp[:, rows, cols], W[:, :, a, e], groups)
        ctx.save_for_backward(P, W)
        ctx.meta = (S, stride, padding, dilation, groups, out_hw)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        P, W = ctx.saved_tensors
        S, stride, (p0, p1), dilation, groups, out_hw = ctx.meta
        B, H, Wd, C0, Rh, Rw, C = P.shape
        need_p, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        Pp = F.pad(P, (0, 0, 0, 0, 0, 0, 0, 0, p1, p1, p0, p0)) if (p0 or p1) else P
        gPp = torch.zeros_like(Pp) if need_p else None
        gW = torch.zeros_like(W) if need_w else None
        Co, Cg = W.shape[:2]
        for a, e, rows, cols, u0, v0 in _taps(W, S, stride, dilation, out_hw):
            g = grad_out[:, :, :, :, u0:u0 + Rh, v0:v0 + Rw]
            if need_p:
                gPp[:, rows, cols] += tap_matmul(g, W[:, :, a, e], groups, transpose=True)
            if need_w:
                x = Pp[:, rows, cols]
                if x.shape[0] != g.shape[0]:
                    x = x.expand((g.shape[0],) + x.shape[1:])
                if groups == 1:
                    gW[:, :, a, e] += g.reshape(-1, Co).T @ x.reshape(-1, C)
                else:
                    gW[:, :, a, e] += torch.einsum("mgo,mgc->goc", g.reshape(-1, groups, Co // groups),
                                                   x.reshape(-1, groups, Cg)).reshape(Co, Cg)
        gP = None
        if need_p:
            gP = gPp[:, p0:p0 + H, p1:p1 + Wd] if (p0 or p1) else gPp
            if gP.shape[0] != P.shape[0]:
                gP = gP.sum(0, keepdim=True)
        return gP, gW, None, None, None, None, None, None


def _unfold_radius(patch: Patch, r: Tensor) -> Tensor:
    """r in window layout: (N, C0, Rh, Rw, H, W) with r[b, c0, h S - pad + u, w S - pad + v]."""
    P, S, pad = patch
    H, W, C0, Rh, Rw = P.shape[1:6]
    H0, W0 = r.shape[2:]
    Ht, Wt = (H - 1) * S[0] + Rh, (W - 1) * S[1] + Rw  # the padded extent the windows cover
    # pad, then crop what the windows do not reach: F.pad's own negative amounts would crop the
    # input before padding it and fail where a window lies in the padding only
    rp = F.pad(r, (pad[1], max(0, Wt - W0 - pad[1]), pad[0], max(0, Ht - H0 - pad[0])))[..., :Ht, :Wt]
    return F.unfold(rp, (Rh, Rw), stride=S).reshape(r.shape[0], C0, Rh, Rw, H, W)


def radius(patch: Patch, r: Tensor) -> Tensor:
    """``|J_k| r`` per neuron, in layer layout (N, C, H, W); r is (N, C0, H0, W0)."""
    P = patch[0]
    N = r.shape[0]
    _, H, W, C0, Rh, Rw, C = P.shape
    ru = _unfold_radius(patch, r).permute(0, 4, 5, 1, 2, 3).reshape(N * H * W, 1, C0 * Rh * Rw)
    A = P.abs()
    if A.shape[0] != N:
        A = A.expand((N,) + A.shape[1:])
    # one (1 x C0 R^2) @ (C0 R^2 x C) product per neuron position, reading P in its own layout
    rad = torch.matmul(ru, A.reshape(N * H * W, C0 * Rh * Rw, C))
    return rad.reshape(N, H, W, C).permute(0, 3, 1, 2)


def mask(patch: Patch, s: Tensor, inplace: bool = False) -> Patch:
    """``S_k J_k``: zero the rows of neurons whose mask s (N, C, H, W) is 0.

    ``inplace``: multiply P itself (no new tensor) where P already has the full batch; only for
    a P that nothing else holds and no graph records."""
    P, S, pad = patch
    sv = s.permute(0, 2, 3, 1)[:, :, :, None, None, None, :]
    if inplace and P.shape[0] == s.shape[0]:
        return P.mul_(sv), S, pad
    return P * sv, S, pad


def _canvas_size(patch: Patch, H0: int, W0: int) -> Tuple[int, int]:
    """Rows and columns of a canvas that holds every window and the (padded) input."""
    P, S, pad = patch
    H, W, _, Rh, Rw = P.shape[1:6]
    return max((H - 1) * S[0] + Rh, pad[0] + H0), max((W - 1) * S[1] + Rw, pad[1] + W0)


def to_directions(patch: Patch, r: Tensor) -> Tensor:
    """Dense ``J_k diag(r)`` in direction-major layout (N, n, C, H, W)."""
    P, S, pad = patch
    N = r.shape[0]
    if P.shape[0] != N:
        P = P.expand((N,) + P.shape[1:])
    _, H, W, C0, Rh, Rw, C = P.shape
    H0, W0 = r.shape[2:]
    Yc, Xc = _canvas_size(patch, H0, W0)
    h, w, u, v = torch.meshgrid(*(torch.arange(k, device=P.device) for k in (H, W, Rh, Rw)), indexing="ij")
    index = (((h * S[0] + u) * Xc + (w * S[1] + v)) * H + h) * W + w  # canvas (y, x, h, w) per (h, w, u, v)
    src = P.permute(0, 3, 1, 2, 4, 5, 6).reshape(N, C0, H * W * Rh * Rw, C)
    canvas = P.new_zeros(N, C0, Yc * Xc * H * W, C).index_copy(2, index.flatten(), src)
    J = canvas.reshape(N, C0, Yc, Xc, H, W, C)[:, :, pad[0]: pad[0] + H0, pad[1]: pad[1] + W0]
    D = J * r[:, :, :, :, None, None, None]
    return D.reshape(N, C0 * H0 * W0, H, W, C).permute(0, 1, 4, 2, 3)


def flatten_linear_directions(patch: Patch, weight: Tensor, r: Tensor) -> Tensor:
    """Dense ``W J_k diag(r)`` for ``Linear(Flatten(.))`` straight from patches: (N, n, out).

    One batched matmul over positions contracts each position's (C0, R, R, C) window with the
    Linear columns of that position (out * C * C0 R^2 per position instead of out * C * n).
    The windows are ordered (u, v, sample) inside each position, so the product is already a
    stack of (sample, out) slabs, one per window entry, that one ``index_add`` over dim 0 adds
    into the input canvas (its backward is one ``index_select``); no transpose of the product,
    which is R^2 H W / n times larger than the result, is ever made.
    """
    P, S, pad = patch
    N = r.shape[0]
    if P.shape[0] != N:
        P = P.expand((N,) + P.shape[1:])
    _, H, W, C0, Rh, Rw, C = P.shape
    out_f = weight.shape[0]
    H0, W0 = r.shape[2:]
    w = weight.reshape(out_f, C, H * W).permute(2, 1, 0).contiguous()  # (HW, C, out)
    A = P.permute(1, 2, 4, 5, 0, 3, 6).reshape(H * W, Rh * Rw * N * C0, C)  # (h w, u v b c0, c)
    Y = torch.bmm(A, w).reshape(H * W * Rh * Rw, N * C0, out_f)
    Yc, Xc = _canvas_size(patch, H0, W0)
    h, w_, u, v = torch.meshgrid(*(torch.arange(k, device=P.device) for k in (H, W, Rh, Rw)), indexing="ij")
    index = ((h * S[0] + u) * Xc + (w_ * S[1] + v)).flatten()  # canvas position of each window entry
    canvas = P.new_zeros(Yc * Xc, N * C0, out_f).index_add(0, index, Y)  # backward: one index_select
    J = canvas.reshape(Yc, Xc, N, C0, out_f)[pad[0]: pad[0] + H0, pad[1]: pad[1] + W0].permute(2, 3, 0, 1, 4)
    return (J * r[..., None]).reshape(N, C0 * H0 * W0, out_f)
