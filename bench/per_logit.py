"""The baseline the network benchmarks compare ETB(mask="ibp") with: the authors' release
algorithm written plainly (IBP masks, a masked forward pass, one autograd pass per logit)."""
from __future__ import annotations

import torch
from torch import nn

import etbkernels


def per_logit_autograd(model: nn.Sequential, x: torch.Tensor, eps: float,
                       create_graph: bool = False) -> etbkernels.Bounds:
    """ETB bounds with IBP masks by K autograd passes (K logits); the same bounds as
    ``etbkernels.bounds(model, x, eps, mask="ibp")``.

    ``create_graph=True`` keeps the passes differentiable in the weights (for training), at the
    cost of a double backward when a loss on the result is backpropagated."""
    _, layers = etbkernels.bounds(model, x, eps, method="ibp", return_layers=True)
    masks = [(b.upper > 0).to(x.dtype) for b in layers]
    with torch.enable_grad():
        xx = x.detach().clone().requires_grad_(True)
        z, i = xx, 0
        for m in model:
            if isinstance(m, nn.ReLU):
                z = masks[i] * z
                i += 1
            else:
                z = m(z)
        radius = []
        for j in range(z.shape[1]):
            (g,) = torch.autograd.grad(z[:, j].sum(), xx, retain_graph=create_graph or j + 1 < z.shape[1],
                                       create_graph=create_graph)
            radius.append(g.abs().flatten(1).sum(1) * eps)
    center = model(x)
    return etbkernels.Bounds.from_center_radius(center, torch.stack(radius, 1))
