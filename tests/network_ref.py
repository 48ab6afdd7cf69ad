"""Independent references for the network-bound tests: written against nn.Modules and autograd,
sharing no code with etbkernels.network (no folding, no layer ops, no chunking)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def modules(model):
    out = []
    for m in model.children():
        out.extend(modules(m) if isinstance(m, nn.Sequential) else [m])
    return out


def ibp_ref(model, x, eps, lowers=None):
    """Module-by-module IBP; returns (output lower, upper, [upper bound at each ReLU input]).
    ``lowers``: a list that receives the lower bound at each ReLU input."""
    c, r = x, torch.as_tensor(eps, dtype=x.dtype).expand_as(x)
    uppers = []
    for m in modules(model):
        if isinstance(m, nn.ReLU):
            uppers.append(c + r)
            if lowers is not None:
                lowers.append(c - r)
            u, l = torch.relu(c + r), torch.relu(c - r)
            c, r = (u + l) / 2, (u - l) / 2
        elif isinstance(m, nn.Linear):
            c, r = m(c), r @ m.weight.abs().T
        elif isinstance(m, nn.Conv2d):
            c, r = m(c), F.conv2d(r, m.weight.abs(), None, m.stride, m.padding, m.dilation, m.groups)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            scale = m.weight / torch.sqrt(m.running_var + m.eps)
            view = (1, -1) + (1,) * (c.dim() - 2)
            c, r = m(c), r * scale.abs().reshape(view)
        elif isinstance(m, nn.AvgPool2d):
            c, r = m(c), m(r)
        elif m.__class__.__name__ == "Normalize":
            view = (1, -1) + (1,) * (c.dim() - 2)
            c, r = m(c), r / m.std.reshape(view)
        elif isinstance(m, (nn.Flatten, nn.Dropout, nn.Identity)):
            c, r = m(c), m(r)
        else:
            raise AssertionError(m)
    return c - r, c + r, uppers


def masked_forward(model, x, masks, center_at="linear"):
    """The network with ReLU i replaced by multiplication with masks[i] (center_at="linear");
    with center_at="output" the real network (masks unused)."""
    z, i = x, 0
    for m in modules(model):
        if isinstance(m, nn.ReLU):
            z = masks[i] * z if center_at == "linear" else torch.relu(z)
            i += 1
        else:
            z = m(z)
    return z


def per_logit_autograd(model, x, eps, center_at="linear", spec=None):
    """The ETB authors' release algorithm: IBP masks, then one autograd pass per logit for the
    rows of the linearized network's Jacobian. Returns (center, radius), (N, K)."""
    _, _, uppers = ibp_ref(model, x, eps)
    masks = [(u > 0).to(x.dtype).detach() for u in uppers]
    xx = x.detach().clone().requires_grad_(True)
    z = masked_forward(model, xx, masks, "linear").flatten(1)
    if spec is not None:
        z = torch.einsum("nm,nkm->nk", z, spec) if spec.dim() == 3 else z @ spec.T
    eps_t = torch.as_tensor(eps, dtype=x.dtype).expand_as(x)
    radius = []
    for j in range(z.shape[1]):
        (g,) = torch.autograd.grad(z[:, j].sum(), xx, retain_graph=True)
        radius.append((g.abs() * eps_t).flatten(1).sum(1))
    center = masked_forward(model, x, masks, center_at).flatten(1)
    if spec is not None:
        center = torch.einsum("nm,nkm->nk", center, spec) if spec.dim() == 3 else center @ spec.T
    return center, torch.stack(radius, 1)


def blockwise_jacobian_ref(model, x, eps, center_at="linear", spec=None):
    """ETB with mask="etb", one sample at a time with full Jacobians of each masked prefix.

    Returns (center, radius) of the output and a list of (center, radius) per ReLU input."""
    mods = modules(model)
    relu_idx = [i for i, m in enumerate(mods) if isinstance(m, nn.ReLU)]
    eps_t = torch.as_tensor(eps, dtype=x.dtype).expand_as(x)
    per_sample = []
    for b in range(x.shape[0]):
        xb, rb = x[b:b + 1], eps_t[b:b + 1]
        masks, layers = [], []

        def prefix(inp, end, masks=masks, mode="linear"):
            z, i = inp, 0
            for m in mods[:end]:
                if isinstance(m, nn.ReLU):
                    z = masks[i] * z if mode == "linear" else torch.relu(z)
                    i += 1
                else:
                    z = m(z)
            return z

        for end in relu_idx + [len(mods)]:
            J = torch.autograd.functional.jacobian(lambda t: prefix(t, end).flatten(), xb, vectorize=True).reshape(-1, xb.numel())
            center = prefix(xb, end, mode=center_at).flatten()
            if end == len(mods) and spec is not None:
                C = spec[b] if spec.dim() == 3 else spec
                J, center = C @ J, C @ center
            radius = J.abs() @ rb.flatten()
            layers.append((center, radius))
            if end != len(mods):
                shape = prefix(xb, end).shape
                masks.append(((center + radius) > 0).to(x.dtype).reshape(shape))
        per_sample.append(layers)
    L = len(per_sample[0])
    stacked = [(torch.stack([p[k][0] for p in per_sample]), torch.stack([p[k][1] for p in per_sample]))
               for k in range(L)]
    return stacked[-1], stacked[:-1]


def affine_segments(model, x, per_module=False):
    """The network cut at its ReLUs: [(W, b)] with segment(z) = W z + b on flattened z, read off
    by evaluating each segment at 0 and at the unit vectors. ``per_module``: each segment as a
    list of such maps, one per module."""
    mods = modules(model)
    segments, cur = [], []
    for m in mods:
        if isinstance(m, nn.ReLU):
            segments.append(cur)
            cur = []
        else:
            cur.append(m)
    segments.append(cur)
    out, shape = [], x.shape[1:]
    for seg in segments:
        maps = []
        for part in ([[m] for m in seg] if per_module else [seg]):
            n = 1
            for s in shape:
                n *= s
            f = nn.Sequential(*part)
            y0 = f(torch.zeros((1,) + tuple(shape), dtype=x.dtype))
            b = y0.flatten(1)[0]
            W = (f(torch.eye(n, dtype=x.dtype).reshape((n,) + tuple(shape))).flatten(1) - b).T
            maps.append((W, b))
            shape = y0.shape[1:]
        out.append(maps if per_module else maps[0])
    return out


def _relaxation_ref(l, u):
    """CROWN's ReLU lines, one neuron at a time: (a_l, a_u, c_u)."""
    a_u, c_u, a_l = torch.zeros_like(u), torch.zeros_like(u), torch.zeros_like(u)
    for j in range(u.numel()):
        if l[j] >= 0:
            a_u[j] = a_l[j] = 1.0
        elif u[j] > 0:
            a_u[j] = u[j] / (u[j] - l[j])
            c_u[j] = -u[j] * l[j] / (u[j] - l[j])
            a_l[j] = 1.0 if u[j] >= -l[j] else 0.0
    return a_l, a_u, c_u


def crown_ibp_ref(model, x, eps, spec=None, pre=None):
    """Backward CROWN, one sample at a time with dense matrices (:func:`affine_segments`); the
    pre-activation bounds at each ReLU are IBP's (CROWN-IBP) unless ``pre`` gives them as
    [(lower, upper)] (flattened per sample); lower and upper bounds are relaxed separately (no
    sign trick). Returns (lower, upper), (N, K)."""
    if pre is None:
        lowers = []
        _, _, uppers = ibp_ref(model, x, eps, lowers)
        pre = [(lo.flatten(1), up.flatten(1)) for lo, up in zip(lowers, uppers)]
    eps_t = torch.as_tensor(eps, dtype=x.dtype).expand_as(x)
    mats = affine_segments(model, x)
    lo_all, up_all = [], []
    for i in range(x.shape[0]):
        W, b = mats[-1]
        C = torch.eye(W.shape[0], dtype=x.dtype) if spec is None else (spec[i] if spec.dim() == 3 else spec)
        res = []
        for side in (-1.0, 1.0):  # -1: lower bound, +1: upper bound
            lam, bias = C @ W, C @ b
            for k in range(len(mats) - 2, -1, -1):
                a_l, a_u, c_u = _relaxation_ref(pre[k][0][i], pre[k][1][i])
                # upper bound: positive coefficients take the upper line; lower bound: the lower line
                up_side = (lam > 0) if side > 0 else (lam < 0)
                slope = torch.where(up_side, a_u, a_l)
                bias = bias + (torch.where(up_side, lam, torch.zeros_like(lam)) * c_u).sum(1)
                lam = lam * slope
                Wk, bk = mats[k]
                bias = bias + lam @ bk
                lam = lam @ Wk
            res.append(lam @ x[i].flatten() + side * (lam.abs() @ eps_t[i].flatten()) + bias)
        lo_all.append(res[0])
        up_all.append(res[1])
    return torch.stack(lo_all), torch.stack(up_all)


def crown_forward_ref(model, x, eps, spec=None):
    """CROWN's forward mode, one sample at a time: explicit upper and lower linear functions
    (U x + u, L x + l) through W+ / W- of each module's dense matrix (module by module, as the
    library does: for two non-diagonal maps in a row, e.g. AvgPool2d then Conv2d, that is looser
    than splitting their product), concretized over the box at each ReLU and intersected with an
    interval (IBP) propagated module by module from the previous intersected intervals (the spec
    folded into a final Linear for it). Returns [(lower, upper) flattened per sample, for each
    ReLU input and then the output]."""
    eps_t = torch.as_tensor(eps, dtype=x.dtype).expand_as(x)
    segs = affine_segments(model, x, per_module=True)
    per_sample = []
    for i in range(x.shape[0]):
        mu, r = x[i].flatten(), eps_t[i].flatten()
        U = L = torch.eye(mu.numel(), dtype=x.dtype)
        u = l = torch.zeros_like(mu)
        box_lo, box_hi = mu - r, mu + r
        layers = []
        for k, maps in enumerate(segs):
            ibp_maps = maps
            if k == len(segs) - 1 and spec is not None:
                C = spec[i] if spec.dim() == 3 else spec
                ibp_maps = maps[:-1] + [(C @ maps[-1][0], C @ maps[-1][1])]
                maps = maps + [(C, torch.zeros(C.shape[0], dtype=x.dtype))]
            for W, b in maps:
                Wp, Wn = W.clamp(min=0), W.clamp(max=0)
                U, L, u, l = Wp @ U + Wn @ L, Wp @ L + Wn @ U, Wp @ u + Wn @ l + b, Wp @ l + Wn @ u + b
            for W, b in ibp_maps:  # interval arithmetic on [box_lo, box_hi]
                Wp, Wn = W.clamp(min=0), W.clamp(max=0)
                box_lo, box_hi = Wp @ box_lo + Wn @ box_hi + b, Wp @ box_hi + Wn @ box_lo + b
            hi = torch.minimum(U @ mu + U.abs() @ r + u, box_hi)
            lo = torch.maximum(L @ mu - L.abs() @ r + l, box_lo)
            layers.append((lo, hi))
            if k < len(segs) - 1:
                a_l, a_u, c_u = _relaxation_ref(lo, hi)
                U, u = a_u[:, None] * U, a_u * u + c_u
                L, l = a_l[:, None] * L, a_l * l
                box_lo, box_hi = torch.relu(lo), torch.relu(hi)
        per_sample.append(layers)
    return [(torch.stack([p[k][0] for p in per_sample]), torch.stack([p[k][1] for p in per_sample]))
            for k in range(len(segs))]


def _interval_through(maps, lo, hi):
    """Interval arithmetic through dense maps [(W, b)], one after the other."""
    for W, b in maps:
        Wp, Wn = W.clamp(min=0), W.clamp(max=0)
        lo, hi = Wp @ lo + Wn @ hi + b, Wp @ hi + Wn @ lo + b
    return lo, hi


def crown_full_ref(model, x, eps, spec=None):
    """Full CROWN, layer by layer: the pre-activation bounds of ReLU k are :func:`crown_ibp_ref` of
    the model cut before that ReLU, on the (earlier) bounds computed so far, intersected with
    interval arithmetic module by module (:func:`affine_segments` ``per_module``) from the previous
    intersected interval; the output likewise (the spec folded into the last module's map for the
    interval). Returns [(lower, upper) flattened per sample, for each ReLU input and the output]."""
    mods = modules(model)
    relus = [i for i, m in enumerate(mods) if isinstance(m, nn.ReLU)]
    segs = affine_segments(model, x, per_module=True)
    eps_t = torch.as_tensor(eps, dtype=x.dtype).expand_as(x)
    lo_box, hi_box = (x - eps_t).flatten(1), (x + eps_t).flatten(1)
    out = []
    for k, maps in enumerate(segs):
        last = k == len(segs) - 1
        if last and spec is not None:
            lo_c, up_c = crown_ibp_ref(model, x, eps, spec, pre=out)
        else:
            cut = model if last else nn.Sequential(*mods[:relus[k]])
            lo_c, up_c = crown_ibp_ref(cut, x, eps, pre=out)
        ibp_lo, ibp_hi = [], []
        for i in range(x.shape[0]):
            m = maps
            if last and spec is not None:
                C = spec[i] if spec.dim() == 3 else spec
                m = maps[:-1] + [(C @ maps[-1][0], C @ maps[-1][1])]
            if k == 0:
                a, b = lo_box[i], hi_box[i]
            else:
                a, b = torch.relu(out[-1][0][i]), torch.relu(out[-1][1][i])
            lo_i, hi_i = _interval_through(m, a, b)
            ibp_lo.append(lo_i)
            ibp_hi.append(hi_i)
        lo = torch.maximum(lo_c, torch.stack(ibp_lo))
        hi = torch.maximum(torch.minimum(up_c, torch.stack(ibp_hi)), lo)
        out.append((lo, hi))
    return out
