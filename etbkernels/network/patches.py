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

from .layers import AvgPoolOp, ChannelAffineOp, ConvOp

Patch = Tuple[Tensor, Tuple[int, int], Tuple[int, int]]  # (P, stride S, pad)


def supports(op) -> bool:
    """Whether ``op`` maps patches to patches."""
    return isinstance(op, (ConvOp, ChannelAffineOp, AvgPoolOp))


def identity(in_shape, dtype, device) -> Patch:
    """The input itself: 1 x 1 windows, (1, H0, W0, C0, 1, 1, C0)."""
    C0, H0, W0 = in_shape
    eye = torch.eye(C0, dtype=dtype, device=device).reshape(1, 1, 1, C0, 1, 1, C0)
    return eye.expand(1, H0, W0, C0, 1, 1, C0), (1, 1), (0, 0)


def grown_size(patch: Patch, op) -> int:
    """C0 * R'h * R'w after ``op``: the per-neuron numbers patches would store."""
    P, S, _ = patch
    if isinstance(op, ChannelAffineOp):
        return P.shape[3] * P.shape[4] * P.shape[5]
    conv = op._conv if isinstance(op, AvgPoolOp) else op
    kh, kw = conv.weight.shape[2:]
    return P.shape[3] * (P.shape[4] + (kh - 1) * conv.dilation[0] * S[0]) * \
        (P.shape[5] + (kw - 1) * conv.dilation[1] * S[1])


def apply(patch: Patch, op) -> Patch:
    """``op``'s linear part applied to the patches (see the module docstring)."""
    P, S, pad = patch
    if isinstance(op, ChannelAffineOp):
        return P * op.scale.flatten(), S, pad
    conv = op._conv if isinstance(op, AvgPoolOp) else op
    W = conv.weight  # (C', C/g, kh, kw)
    Co, Cg, kh, kw = W.shape
    g = conv.groups
    (s0, s1), (p0, p1), (d0, d1) = conv.stride, conv.padding, conv.dilation
    B, H, Wd, C0, Rh, Rw, C = P.shape
    Hn, Wn = conv.out_shape[1:]
    if p0 or p1:  # zero padding of the layer's input = neurons that do not exist
        P = F.pad(P, (0, 0, 0, 0, 0, 0, 0, 0, p1, p1, p0, p0))
    Rh2, Rw2 = Rh + (kh - 1) * d0 * S[0], Rw + (kw - 1) * d1 * S[1]
    out = P.new_zeros(B, Hn, Wn, C0, Rh2, Rw2, Co)
    for a in range(kh):
        for e in range(kw):
            sl = P[:, a * d0: a * d0 + s0 * (Hn - 1) + 1: s0, e * d1: e * d1 + s1 * (Wn - 1) + 1: s1]
            w = W[:, :, a, e]
            if g == 1:
                contrib = sl @ w.T
            else:
                contrib = torch.einsum("...gc,goc->...go", sl.unflatten(-1, (g, Cg)),
                                       w.reshape(g, Co // g, Cg)).flatten(-2)
            u0, v0 = a * d0 * S[0], e * d1 * S[1]
            out[:, :, :, :, u0:u0 + Rh, v0:v0 + Rw] += contrib
    return out, (S[0] * s0, S[1] * s1), (pad[0] + p0 * S[0], pad[1] + p1 * S[1])


def _unfold_radius(patch: Patch, r: Tensor) -> Tensor:
    """r in window layout: (N, C0, Rh, Rw, H, W) with r[b, c0, h S - pad + u, w S - pad + v]."""
    P, S, pad = patch
    H, W, C0, Rh, Rw = P.shape[1:6]
    H0, W0 = r.shape[2:]
    right_h = (H - 1) * S[0] + Rh - H0 - pad[0]
    right_w = (W - 1) * S[1] + Rw - W0 - pad[1]
    rp = F.pad(r, (pad[1], right_w, pad[0], right_h))  # negative amounts crop
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


def mask(patch: Patch, s: Tensor) -> Patch:
    """``S_k J_k``: zero the rows of neurons whose mask s (N, C, H, W) is 0."""
    P, S, pad = patch
    return P * s.permute(0, 2, 3, 1)[:, :, :, None, None, None, :], S, pad


def to_directions(patch: Patch, r: Tensor) -> Tensor:
    """Dense ``J_k diag(r)`` in direction-major layout (N, n, C, H, W)."""
    P, S, pad = patch
    N = r.shape[0]
    if P.shape[0] != N:
        P = P.expand((N,) + P.shape[1:])
    _, H, W, C0, Rh, Rw, C = P.shape
    H0, W0 = r.shape[2:]
    Yc, Xc = max((H - 1) * S[0] + Rh, pad[0] + H0), max((W - 1) * S[1] + Rw, pad[1] + W0)
    canvas = P.new_zeros(N, C0, Yc, Xc, H, W, C)
    for h in range(H):
        for w in range(W):
            canvas[:, :, h * S[0]: h * S[0] + Rh, w * S[1]: w * S[1] + Rw, h, w] = P[:, h, w]
    J = canvas[:, :, pad[0]: pad[0] + H0, pad[1]: pad[1] + W0]  # (N, C0, H0, W0, H, W, C)
    D = J * r[:, :, :, :, None, None, None]
    return D.reshape(N, C0 * H0 * W0, H, W, C).permute(0, 1, 4, 2, 3)


def flatten_linear_directions(patch: Patch, weight: Tensor, r: Tensor) -> Tensor:
    """Dense ``W J_k diag(r)`` for ``Linear(Flatten(.))`` straight from patches: (N, n, out).

    One batched matmul over positions contracts each position's (C0, R, R, C) window with the
    Linear columns of that position (out * C * C0 R^2 per position instead of out * C * n);
    the windows are then added into the input canvas (output features innermost, so each add
    moves contiguous rows).
    """
    P, S, pad = patch
    N = r.shape[0]
    if P.shape[0] != N:
        P = P.expand((N,) + P.shape[1:])
    _, H, W, C0, Rh, Rw, C = P.shape
    out_f = weight.shape[0]
    H0, W0 = r.shape[2:]
    w = weight.reshape(out_f, C, H * W).permute(2, 1, 0).contiguous()  # (HW, C, out)
    Y = torch.bmm(P.permute(1, 2, 0, 3, 4, 5, 6).reshape(H * W, N * C0 * Rh * Rw, C), w)
    Y = Y.reshape(H, W, N, C0, Rh, Rw, out_f)
    Yc, Xc = max((H - 1) * S[0] + Rh, pad[0] + H0), max((W - 1) * S[1] + Rw, pad[1] + W0)
    canvas = P.new_zeros(N, C0, Yc, Xc, out_f)
    for h in range(H):
        for w_ in range(W):
            canvas[:, :, h * S[0]: h * S[0] + Rh, w_ * S[1]: w_ * S[1] + Rw] += Y[h, w_]
    J = canvas[:, :, pad[0]: pad[0] + H0, pad[1]: pad[1] + W0]  # (N, C0, H0, W0, out)
    return (J * r[..., None]).reshape(N, C0 * H0 * W0, out_f)
