"""Sequential models and settings whose bounds were recorded by the chain parser, before the traced
operator graph replaced it (tests/data/sequential_bounds.pt, made by ``python tests/graph_baseline.py``
at that commit). tests/test_graph_baseline.py checks that every method still gives them."""
from __future__ import annotations

import torch
from torch import nn

from etbkernels.network import Normalize
from etbkernels.network.models import mlp, small_cnn

# every method and ETB option the chain parser had
SETTINGS = [dict(method="ibp"), dict(method="crown-ibp"), dict(method="crown-forward"), dict(method="crown"),
            dict(method="etb", mask="etb", center_at="output"), dict(method="etb", mask="etb", center_at="linear"),
            dict(method="etb", mask="ibp", center_at="output"), dict(method="etb", mask="ibp", center_at="linear")]


def _bn(n, two_d):
    bn = nn.BatchNorm2d(n) if two_d else nn.BatchNorm1d(n)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return bn


def models():
    """(name, model, x) triples in float64, deterministic."""
    torch.manual_seed(0)
    out = [
        ("mlp", mlp((12, 20, 16, 5)), torch.rand(4, 12)),
        ("mlp_bn_dropout", nn.Sequential(nn.Linear(10, 16), _bn(16, False), nn.ReLU(), nn.Dropout(0.3),
                                         nn.Linear(16, 12), nn.ReLU(), nn.Identity(), nn.Linear(12, 4)),
         torch.rand(3, 10)),
        ("small_cnn", nn.Sequential(Normalize([0.13], [0.31]), *small_cnn(in_dim=12, classes=6)), torch.rand(3, 1, 12, 12)),
        ("cnn_options", nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), _bn(4, True), nn.ReLU(),
                                      nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2), nn.ReLU(),
                                      nn.AvgPool2d(2), nn.Flatten(), nn.Linear(6 * 2 * 2, 7), nn.ReLU(),
                                      nn.Linear(7, 3)),
         torch.rand(2, 2, 9, 9)),
        ("relu_first_and_last", nn.Sequential(nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU()),
         torch.rand(3, 6) - 0.5),
        ("conv_grid_output", nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 2)), torch.rand(2, 1, 6, 6)),
    ]
    return [(name, m.double().eval(), x.double()) for name, m, x in out]


def compute():
    """{(model name, setting index): (lower, upper)}, eps 0.05."""
    import etbkernels
    res = {}
    for name, model, x in models():
        for i, kw in enumerate(SETTINGS):
            b = etbkernels.bounds(model, x, 0.05, **kw)
            res[f"{name}/{i}"] = torch.stack([b.lower.detach(), b.upper.detach()])
    return res


if __name__ == "__main__":
    import os
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "sequential_bounds.pt")
    torch.save(compute(), path)
    print("wrote", path)
