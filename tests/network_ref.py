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


def ibp_ref(model, x, eps):
    """Module-by-module IBP; returns (output lower, upper, [upper bound at each ReLU input])."""
    c, r = x, torch.as_tensor(eps, dtype=x.dtype).expand_as(x)
    uppers = []
    for m in modules(model):
        if isinstance(m, nn.ReLU):
            uppers.append(c + r)
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
