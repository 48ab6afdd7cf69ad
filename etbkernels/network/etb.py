"""ETB propagation through a parsed network, for one chunk of samples (docs/math.md, "Deep networks").

Two ways to form the per-sample linear parts ``J_k`` of the masked prefixes:

- :func:`etb_forward` (every layer's bound; needed for ``mask="etb"``): pushes the ``n`` input
  directions ``diag(r)`` forward, ``D_k = A_k S_{k-1} D_{k-1}`` (a batch of N*n "images" through
  each Linear/Conv2d), so ``radius_k = sum over directions |D_k|``. Cost ~ n forward passes per
  sample; memory N * n * (widest layer). For the output alone (``output_only``) the trailing
  Linear layers form only the rows their masks need (:mod:`.etb_tail`).
- :func:`etb_backward` (the output / spec rows only, masks known, e.g. ``mask="ibp"``): pulls
  the K rows of ``C`` backward, ``Lambda <- Lambda A_k S_{k-1}`` (Linear transposes and
  conv_transpose2d on N*K images). Cost ~ K backward passes; memory N * K * (widest layer).

Both are plain differentiable PyTorch; the caller chunks samples to bound memory.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import patches
from .directions import abs_sum_directions, apply_directions, spec_directions, spec_values
from .etb_tail import lazy_tail, radius_of_rows, tail_start
from .parse import Network
from .pullback import channels_last_like_rows, output_rows, pull_back_stage, row_group

CR = Tuple[Tensor, Tensor]  # (center, radius)


def _use_patches(net: Network) -> bool:
    return len(net.in_shape) == 3 and all(patches.supports(op) for op in net.stages[0])


def first_stage_directions(net: Network, dtype, device):
    """``A_1`` applied to the identity, shared by all samples: patches for a conv first stage
    (see :mod:`.patches`), else dense directions (n, *shape of stage 1)."""
    if _use_patches(net):
        p = patches.identity(net.in_shape, dtype, device)
        for op in net.stages[0]:
            p = patches.apply(p, op)
        return p
    n = 1
    for s in net.in_shape:
        n *= s
    D = torch.eye(n, dtype=dtype, device=device).reshape((n,) + tuple(net.in_shape))
    for op in net.stages[0]:
        D = op.linear(D)
    return D


def forward_numel_per_sample(net: Network, total: bool = False) -> int:
    """Numel of the largest Jacobian tensor :func:`etb_forward` holds per sample (for chunking).

    With ``total=True``: the sum over layers instead, what autograd keeps alive for backward.
    """
    peak, sizes = _jacobian_sizes(net)
    return sum(s for _, s, _ in sizes) if total else peak


def saved_numel_per_sample(net: Network, tail: Optional[int]) -> int:
    """Numel per sample of what an output-only :func:`etb_forward` chunk's graph saves for backward:
    the Jacobian tensors of stages 0 .. tail-1 (the lazy tail from stage ``tail`` on forms only rows;
    None: every stage), not the input's identity (shared), plus each layer's centre and mask.
    Within 5% of the bytes the graphs saved on the small and medium CNNs (2026-12-06; the test)."""
    _, sizes = _jacobian_sizes(net)
    end = len(net.stages) if tail is None else tail
    layers = sum(2 * math.prod(op.out_shape) for st in net.stages[:end] for op in st)
    return sum(saved for k, _, saved in sizes[1:] if k < end) + layers


def _jacobian_sizes(net: Network):
    """(the largest per-sample Jacobian numel, [(stage, numel, saved numel)] of each tensor formed, the
    input first). The fused Flatten + Linear saves its result only (its copy of the patches repeats
    the last conv's output, which nothing else keeps), and the entries after it that repeat that
    result (the unfused ops' sizes, kept in the totals of the chunk rules) save nothing."""
    n = 1
    for d in net.in_shape:
        n *= d
    patch = _use_patches(net)
    rh = rw = 1
    sh = sw = 1
    c0 = net.in_shape[0]
    peak = n
    sizes = [(-1, n, True)]
    k = skip = 0

    def _acc(cur, *vals, saved=None):
        sizes.append((k, max(vals), 0 if skip else max(vals) if saved is None else saved))
        return max(cur, *vals)

    for k, stage in enumerate(net.stages):
        for i, op in enumerate(stage):
            skip = max(0, skip - 1)
            out = 1
            for d in op.out_shape:
                out *= d
            if patch and _flatten_linear(stage, i):
                # fused Flatten + Linear (flatten_linear_directions): a copy of the patches and the
                # (C0, canvas, out) result, the canvas covering the windows and the input
                H, W = op.in_shape[1:]
                out = stage[i + 1].out_shape[0]
                canvas = c0 * max((H - 1) * sh + rh, net.in_shape[1]) * max((W - 1) * sw + rw, net.in_shape[2])
                peak = _acc(peak, op.in_shape[0] * H * W * c0 * rh * rw, canvas * out, saved=canvas * out)
                patch, skip = False, 2
            if patch and patches.supports(op):
                conv = op.window_conv()
                if conv is not None:
                    kh, kw = conv.weight.shape[2:]
                    rh2, rw2 = rh + (kh - 1) * conv.dilation[0] * sh, rw + (kw - 1) * conv.dilation[1] * sw
                    if c0 * rh2 * rw2 < n or k == 0:
                        rh, rw, sh, sw = rh2, rw2, sh * conv.stride[0], sw * conv.stride[1]
                        peak = _acc(peak, out * c0 * rh * rw)
                        continue
                else:
                    peak = _acc(peak, out * c0 * rh * rw)
                    continue
            if patch:  # conversion to dense directions: the canvas is a little larger than n
                peak = _acc(peak, 2 * n * max(out, 1))
                patch = False
            peak = _acc(peak, n * out)
    return peak, sizes


def _next_activation(z: Tensor, s: Tensor, center_at: str) -> Tensor:
    return s * z if center_at == "linear" else torch.relu(z)


def etb_forward(net: Network, mu: Tensor, r: Tensor, first, center_at: str,
                masks: Optional[Sequence[Tensor]] = None, spec: Optional[Tensor] = None,
                output_only: bool = False, record: Optional[List[Tensor]] = None) -> List[CR]:
    """ETB bounds of every stage output for a chunk of samples, forming ``J_k`` forward.

    Convolutional layers keep ``J_k`` in patches form (:mod:`.patches`) while the windows are
    smaller than the input; from the first Flatten/Linear on (or once windows cover the input)
    ``J_k diag(r)`` is dense, (N, n, *layer shape).

    Args:
        mu, r: (N, *in_shape) box centre and radius (r >= 0).
        first: :func:`first_stage_directions` of ``net``.
        center_at: "linear" (T_k(mu)) or "output" (the network's own f_k(mu)).
        masks: one 0/1 tensor (N, *stage shape) per ReLU, or None for ETB's own masks
            ``1[center_k + radius_k > 0]`` (the blockwise scheme).
        spec: optional (N, K, out) or (K, out) matrix applied to the output.
        output_only: only the last entry of the result is wanted: with ETB's own masks, the
            trailing Linear layers then form only the rows their masks need (:mod:`.etb_tail`),
            and the result lists only the stages before them and the output.
        record: with ``output_only`` and ETB's own masks: an empty list is filled with every mask
            decided (one per ReLU, in order); a filled one is replayed instead, skipping the radii
            that only decide masks (the checkpoint's recomputation of a chunk: the masks it decided
            in forward, at 69-76% of the cost on the MNIST CNNs). The entries before the output are
            then None, not radii.

    Returns:
        [(center_k, radius_k)] for k = 1..L (the last one is the output or ``spec @ output``).
    """
    t = tail_start(net, out_rows(net, spec)) if output_only and masks is None else None
    if not (output_only and masks is None):
        record = None
    replay = bool(record)
    if t == 0:  # no directions at all: the lazy tail starts from the input's, diag(r)
        return [_output_from_tail(net, 0, None, None, r, r.flatten(1), mu.flatten(1), center_at, spec, record)]
    N = mu.shape[0]
    n = r.shape[1:].numel()  # not r[0]: an empty batch has none
    if isinstance(first, tuple):
        P, D = first, None
    else:  # D[b, k] = r_b[k] * J_1 e_k: the columns of J_1 diag(r_b)
        P, D = None, first.unsqueeze(0) * r.reshape((N, n) + (1,) * (first.dim() - 1))
    z = mu
    for op in net.stages[0]:
        z = op.forward(z)
    out: List[CR] = []
    for k in range(1, len(net.stages)):
        # for the output alone a hidden radius only decides a mask: no graph for it (it was half of
        # the small CNN's graph kept for backward)
        if replay:
            radius, s = None, record[k - 1]
        else:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not output_only):
                radius = patches.radius(P, r) if P is not None else abs_sum_directions(D)
            s = (z + radius > 0).to(z.dtype).detach() if masks is None else masks[k - 1]
            if record is not None:
                record.append(s)
        out.append((z, radius))
        # without a graph the masks go in place (no new tensor): P and D are this chunk's own,
        # except the shared first-stage patches, which have batch 1 and are never changed
        inplace = not torch.is_grad_enabled()
        if P is not None:
            P = patches.mask(P, s, inplace=inplace and P[0] is not first[0])
        elif inplace:
            D = D.mul_(s.unsqueeze(1))
        else:
            D = D * s.unsqueeze(1)
        z = _next_activation(z, s, center_at)
        if k == t:
            rad = None if replay else (radius * s).flatten(1)
            return out + [_output_from_tail(net, t, P, D, r, rad, z.flatten(1), center_at, spec, record)]
        ops = net.stages[k]
        i = 0
        while i < len(ops):
            op, step = ops[i], forward_step(ops, i, P, n)
            if step == "flatten_linear":
                P, D = None, patches.flatten_linear_directions(P, ops[i + 1].weight, r)
                z = ops[i + 1].forward(op.forward(z))
                i += 2
                continue
            if step == "densify":
                P, D = None, patches.to_directions(P, r)
            if P is not None:
                P = patches.apply(P, op)
            else:
                D = apply_directions(op, D, "linear")
            z = op.forward(z)
            i += 1
    if P is not None:
        D = patches.to_directions(P, r)
    if spec is not None:
        D, z = spec_directions(D.flatten(2), spec), spec_values(z.flatten(1), spec)
    out.append((z, abs_sum_directions(D)))
    return out


def _output_from_tail(net: Network, t: int, P, D, r: Tensor, rad: Optional[Tensor], z: Tensor, center_at: str,
                      spec: Optional[Tensor], record: Optional[List[Tensor]]) -> CR:
    """The output's (center, radius) through the trailing Linear layers (:mod:`.etb_tail`); P and D
    None: from the input itself (t = 0). ``record``: as in :func:`etb_forward` (rad is None when
    it replays)."""
    if P is not None:
        D = patches.to_directions(P, r)
    if D is not None:
        D = D.reshape(D.shape[0], D.shape[1], math.prod(D.shape[2:]))  # no -1: an empty batch has 0 elements
    z, rows = lazy_tail(net, t, D, rad, z, r, lambda v, s: _next_activation(v, s, center_at), record)
    if spec is not None:
        z, rows = spec_values(z, spec), torch.matmul(spec, rows)
    return z, radius_of_rows(D, rows, r)


def out_rows(net: Network, spec: Optional[Tensor]) -> int:
    """K: the rows of the result (spec rows, or the outputs)."""
    return spec.shape[-2] if spec is not None else math.prod(net.out_shape)


def _flatten_linear(ops, i: int) -> bool:
    """Whether ops[i] is a Flatten followed by a Linear layer (one fused step from patches)."""
    return ops[i].is_flatten and i + 1 < len(ops) and ops[i + 1].dense_weight() is not None


def forward_step(ops, i: int, patch, n: int) -> str:
    """How the forward paths take ``ops[i]`` while the Jacobian is in patches form ``patch`` (None:
    dense): "flatten_linear" (Flatten + Linear straight from patches: two ops), "densify" (to dense
    directions first: the op is not conv-like, or its windows would cover the n inputs) or "apply"."""
    if patch is None:
        return "apply"
    op = ops[i]
    if _flatten_linear(ops, i):
        return "flatten_linear"
    if not (patches.supports(op) and patches.grown_size(patch, op) < n):
        return "densify"
    return "apply"


def output_center(net: Network, mu: Tensor, center_at: str, masks: Sequence[Tensor]) -> Tensor:
    """Centre of the output: the masked linearization T_L(mu) or the network's f(mu)."""
    z = mu
    for k, stage in enumerate(net.stages):
        if k > 0:
            z = _next_activation(z, masks[k - 1], center_at)
        for op in stage:
            z = op.forward(z)
    return z


def etb_backward(net: Network, mu: Tensor, r: Tensor, center_at: str, masks: Sequence[Tensor],
                 spec: Optional[Tensor] = None) -> CR:
    """ETB bounds of the output (or ``spec @ output``) with given masks, forming ``J_L`` backward.

    Args:
        mu, r: (N, *in_shape) box centre and radius.
        masks: one 0/1 tensor (N, *stage shape) per ReLU (e.g. from IBP: ``mask="ibp"``).
        spec: optional (N, K, out) or (K, out).

    Returns:
        (center, radius), each (N, K) (K = out features, or spec rows).
    """
    N = mu.shape[0]
    z = output_center(net, mu, center_at, masks).flatten(1)
    if spec is not None:
        z = spec_values(z, spec)
    lam = output_rows(net, N, mu.dtype, mu.device, spec)
    K = lam.shape[1]
    if K == 0:
        return z, lam.new_zeros(N, 0)
    group = row_group(net, N, K)
    masks = [channels_last_like_rows(m) for m in masks]
    radius = torch.cat([_pull_back(net, lam[:, k0:k0 + group], masks, r) for k0 in range(0, K, group)], dim=1)
    return z, radius


def _pull_back(net: Network, lam: Tensor, masks: Sequence[Tensor], r: Tensor) -> Tensor:
    """``sum_i |(lam J_L)_i| r_i`` for rows lam (N, K, *out_shape) pulled back through the net."""
    # without a graph the masks go in place once lam is a tensor this function made (the
    # caller's rows may be an expanded identity)
    owned, inplace = False, not torch.is_grad_enabled()
    for k in range(len(net.stages) - 1, -1, -1):
        lam, new = pull_back_stage(net.stages[k], lam)
        owned = owned or new
        if k > 0:
            m = masks[k - 1].unsqueeze(1)
            lam = lam.mul_(m) if inplace and owned else lam * m
    return torch.einsum("nki,ni->nk", lam.abs().flatten(2), r.flatten(1))
