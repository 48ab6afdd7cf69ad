"""IBP through whole networks: equals a module-by-module reference and is sound on sampled points."""
import itertools

import pytest
import torch
from torch import nn

from etbkernels.network import Normalize, bounds, margin_spec
from network_ref import ibp_ref
from test_network_reference import tiny_cnn, tiny_mlp

torch.manual_seed(2)


@pytest.mark.parametrize("make,shape", [(tiny_mlp, (4, 12)), (tiny_cnn, (4, 2, 7, 7))])
def test_ibp_equals_module_reference(make, shape):
    model = make()
    x = torch.rand(shape, dtype=torch.float64)
    lo, up, uppers = ibp_ref(model, x, 0.04)
    b, layers = bounds(model, x, 0.04, method="ibp", return_layers=True)
    torch.testing.assert_close(b.lower, lo)
    torch.testing.assert_close(b.upper, up)
    for got, u in zip(layers, uppers):
        torch.testing.assert_close(got.upper, u)


def _sample_box(x, eps, k, lo=None, hi=None):
    """k uniform points, the centre, and 2^d vertices when d is small (else k random vertices)."""
    N, d = x.shape[0], x[0].numel()
    pts = [x + eps * (2 * torch.rand((k,) + x.shape, dtype=x.dtype) - 1)]
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=d)), dtype=x.dtype) if d <= 10 else \
        torch.randint(0, 2, (k, d), dtype=x.dtype) * 2 - 1
    pts.append(x.unsqueeze(0) + eps * signs.reshape((-1, 1) + x.shape[1:]))
    p = torch.cat(pts)
    if lo is not None:
        p = p.clamp(lo, hi)
    return p  # (S, N, ...)


@pytest.mark.parametrize("seed", range(3))
def test_ibp_sound_on_samples_and_vertices(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(Normalize([0.5], [0.25]), nn.Conv2d(1, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(12, 6),
                          nn.ReLU(), nn.Linear(6, 3)).double()
    x = torch.rand(2, 1, 3, 3, dtype=torch.float64)  # 9 inputs: all 512 vertices
    eps = 0.1
    b = bounds(model, x, eps, method="ibp")
    pts = _sample_box(x, eps, 300)
    out = model(pts.reshape(-1, 1, 3, 3)).reshape(pts.shape[0], 2, 3)
    assert bool((out >= b.lower - 1e-12).all()) and bool((out <= b.upper + 1e-12).all())
    # margins (spec) are sound too, and so is the clipped box
    C = margin_spec(torch.tensor([0, 2]), 3, dtype=torch.float64)
    bm = bounds(model, x, eps, method="ibp", spec=C, clip=(0.0, 1.0))
    pts = _sample_box(x, eps, 300, 0.0, 1.0)
    marg = torch.einsum("snm,nkm->snk", model(pts.reshape(-1, 1, 3, 3)).reshape(-1, 2, 3), C)
    assert bool((marg >= bm.lower - 1e-12).all()) and bool((marg <= bm.upper + 1e-12).all())


def test_ibp_sound_bigger_cnn_random_points():
    model = tiny_cnn()
    x = torch.rand(3, 2, 7, 7, dtype=torch.float64)
    b = bounds(model, x, 0.05, method="ibp")
    pts = _sample_box(x, 0.05, 200)
    out = model(pts.reshape((-1,) + x.shape[1:])).reshape(pts.shape[0], 3, -1)
    assert bool((out >= b.lower - 1e-12).all()) and bool((out <= b.upper + 1e-12).all())


def test_clip_shrinks_box():
    model = tiny_mlp()
    x = torch.zeros(2, 12, dtype=torch.float64)
    clipped = bounds(model, x, 0.1, method="ibp", clip=(0.0, 1.0))
    manual = bounds(model, x + 0.05, 0.05, method="ibp")
    torch.testing.assert_close(clipped.lower, manual.lower)
    torch.testing.assert_close(clipped.upper, manual.upper)


def test_leading_and_trailing_relu():
    lin = nn.Linear(5, 3).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    b = bounds(nn.Sequential(nn.ReLU(), lin, nn.ReLU()), x, 0.1, method="ibp")
    ref = bounds(nn.Sequential(lin), torch.relu(x + 0.1) / 2 + torch.relu(x - 0.1) / 2,
                 (torch.relu(x + 0.1) - torch.relu(x - 0.1)) / 2, method="ibp")
    torch.testing.assert_close(b.lower, torch.relu(ref.lower))
    torch.testing.assert_close(b.upper, torch.relu(ref.upper))
    e = bounds(nn.Sequential(nn.ReLU(), lin, nn.ReLU(), nn.ReLU()), x, 0.1)
    assert bool((e.lower >= 0).all())
