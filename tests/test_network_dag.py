"""Bounds of models with branches, concatenation, max-pool and custom forwards (the traced graph's
walkers, etbkernels/network/dag.py): every sound method contains every sampled output (10^4+ points
per model: uniform, vertices, sign-gradient vertices), ETB equals a float64 reference built from the
model's own operations (tests/dag_ref.py), and on chains the graph walkers equal the chain methods.
Every test takes the ``device`` fixture (tests/conftest.py: ``ETBK_TEST_DEVICE``, default cpu): the
bounds are computed there, on a copy of the model; the points and references stay on the CPU."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import etbkernels
from dag_ref import etb_reference
from etbkernels.network import dag_methods
from etbkernels.network.build import build_graph
from etbkernels.network.models import cnn_maxpool, resnet

pytestmark = pytest.mark.usefixtures("one_thread")
SOUND = ["ibp", "crown-ibp", "crown-forward", "crown"]
ETB = [("etb", "output"), ("etb", "linear"), ("ibp", "output"), ("ibp", "linear")]


class ResidualMLP(nn.Module):
    """F.relu and x + y in a custom forward; one Linear used twice."""

    def __init__(self, n, h, k, g):
        super().__init__()
        self.inp, self.shared, self.out = nn.Linear(n, h), nn.Linear(h, h), nn.Linear(h, k)

    def forward(self, x):
        h = F.relu(self.inp(x))
        h = F.relu(self.shared(h)) + h
        h = torch.relu(self.shared(h)) - 0.5 * h
        return self.out(h)


class ResidualCNN(nn.Module):
    """A residual block, then max-pool."""

    def __init__(self, c, k, g):
        super().__init__()
        self.c1 = nn.Conv2d(1, c, 3, padding=1)
        self.c2, self.c3 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        self.relu = nn.ReLU()  # used three times
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(c * 3 * 3, k)

    def forward(self, x):
        y = self.relu(self.c1(x))
        y = self.relu(y + self.c3(self.relu(self.c2(y))))
        return self.fc(torch.flatten(self.pool(y), 1))


class Concat(nn.Module):
    """Two branches concatenated along the channels; overlapping max-pool windows with padding."""

    def __init__(self, c, k, g):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, c, 3, padding=1), nn.Conv2d(2, c + 1, 1)
        self.fc = nn.Linear(2 * c + 1, k)

    def forward(self, x):
        y = torch.cat([F.relu(self.a(x)), self.b(x)], dim=1)
        y = F.max_pool2d(y, 3, stride=1, padding=1)
        y = F.relu(y * 2.0 + 0.1)
        return self.fc(y.mean((2, 3)))


class ViewHead(nn.Module):
    """x.view(x.size(0), -1), adaptive average pooling, a learned per-position shift."""

    def __init__(self, c, k, g):
        super().__init__()
        self.conv = nn.Conv2d(1, c, 3)
        self.shift = nn.Parameter(torch.randn(c, 4, 4, generator=g) * 0.1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(c * 4, k)

    def forward(self, x):
        y = F.relu(self.conv(x) - self.shift)
        y = self.pool(y)
        return self.fc(y.view(y.size(0), -1))


def _models(seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    c = 2 + seed % 3
    return [
        ("residual_mlp", ResidualMLP(7, 6 + seed, 3, g), torch.rand(2, 7, generator=g)),
        ("residual_cnn", ResidualCNN(c, 3, g), torch.rand(2, 1, 6, 6, generator=g)),
        ("concat_maxpool", Concat(c, 4, g), torch.rand(2, 2, 5, 5, generator=g)),
        ("view_adaptive", ViewHead(c, 3, g), torch.rand(2, 1, 6, 6, generator=g)),
    ]


def on(device, model, *tensors):
    """The model (a copy unless on the CPU) and tensors on ``device``."""
    if str(device) == "cpu":
        return (model, *tensors)
    return (copy.deepcopy(model).to(device), *(t.to(device) for t in tensors))


def cpu(b):
    """Bounds back on the CPU, where the points and references are."""
    return etbkernels.Bounds(*(t.cpu() for t in (b.lower, b.upper, b.center, b.radius)))


CASES = [(f"{name}-{seed}", m.double().eval(), x.double()) for seed in (0, 1) for name, m, x in _models(seed)]
EPS = 0.08


def _points(model, x, eps, count=10_000):
    """count points per sample: 45% uniform, 45% vertices, 10% sign-gradient vertices (each output, both signs)."""
    g = torch.Generator().manual_seed(1)
    n_u, n_v = int(count * 0.45), int(count * 0.45)
    u = torch.rand((n_u,) + tuple(x.shape), generator=g, dtype=x.dtype) * 2 - 1
    v = torch.randint(0, 2, (n_v,) + tuple(x.shape), generator=g).to(x.dtype) * 2 - 1
    rest = count - n_u - n_v
    k = model(x).shape[-1]
    starts = x + eps * (torch.rand((rest,) + tuple(x.shape), generator=g, dtype=x.dtype) * 2 - 1)
    starts.requires_grad_(True)
    out = model(starts.reshape((-1,) + tuple(x.shape[1:]))).reshape(rest, x.shape[0], k)
    pick = torch.arange(rest) % (2 * k)
    sel = out.gather(2, (pick % k).reshape(rest, 1, 1).expand(rest, x.shape[0], 1)).squeeze(2)
    sign = torch.where(pick < k, 1.0, -1.0).to(x.dtype).reshape(rest, 1)
    (grad,) = torch.autograd.grad((sel * sign).sum(), starts)
    w = grad.sign()
    w[w == 0] = 1
    return torch.cat([x + eps * u, x + eps * v, x + eps * w.detach()])


@pytest.mark.parametrize("name, model, x", CASES, ids=[c[0] for c in CASES])
def test_sound_methods_contain_every_sampled_output(name, model, x, device):
    pts = _points(model, x, EPS)
    assert pts.shape[0] >= 10_000
    with torch.no_grad():
        y = model(pts.reshape((-1,) + tuple(x.shape[1:]))).reshape((pts.shape[0],) + tuple(model(x).shape))
    widths = {}
    dm, dx = on(device, model, x)
    for method in SOUND:
        b = cpu(etbkernels.bounds(dm, dx, EPS, method=method))
        slack = 1e-10 * (1 + y.abs().max())
        assert bool((y >= b.lower - slack).all()), f"{method}: a point below the lower bound"
        assert bool((y <= b.upper + slack).all()), f"{method}: a point above the upper bound"
        widths[method] = (b.upper - b.lower).mean().item()
    # full CROWN and CROWN's forward mode are intersected with IBP: never looser (CROWN-IBP can be)
    assert widths["crown"] <= widths["ibp"] * (1 + 1e-9)
    assert widths["crown-forward"] <= widths["ibp"] * (1 + 1e-9)


@pytest.mark.parametrize("mask, center_at", ETB)
@pytest.mark.parametrize("name, model, x", CASES[:4], ids=[c[0] for c in CASES[:4]])
def test_etb_equals_the_dense_reference(name, model, x, mask, center_at, device):
    r = torch.full_like(x, EPS)
    dm, dx = on(device, model, x)
    b, layers = etbkernels.bounds(dm, dx, EPS, mask=mask, center_at=center_at, return_layers=True)
    b, layers = cpu(b), [cpu(lay) for lay in layers]
    if mask == "ibp":
        _, ibp_layers = etbkernels.bounds(dm, dx, EPS, method="ibp", return_layers=True)
        ends = [lay.upper.cpu() for lay in ibp_layers]
    else:
        # the choices from our own upper ends, which are checked against the reference's below: a max
        # over near-equal upper ends (equal up to rounding) may otherwise pick another, equally valid input
        ends = [lay.upper.detach() for lay in layers]
    (c_ref, q_ref), pre_ref = etb_reference(model, x, r, center_at, ends)
    scale = 1 + c_ref.abs().max().item() + q_ref.abs().max().item()
    torch.testing.assert_close(b.center, c_ref, rtol=0, atol=1e-12 * scale)
    torch.testing.assert_close(b.radius, q_ref, rtol=0, atol=1e-12 * scale)
    assert len(layers) == len(pre_ref)
    for lay, (c, q) in zip(layers, pre_ref):
        torch.testing.assert_close(lay.center, c, rtol=0, atol=1e-12 * scale)
        torch.testing.assert_close(lay.radius, q, rtol=0, atol=1e-12 * scale)


CHAINS = [
    ("mlp", nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3)),
     torch.rand(3, 6)),
    ("cnn", nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(2 * 2 * 2, 3)), torch.rand(2, 1, 5, 5)),
]


@pytest.mark.parametrize("method, kw", [(m, {}) for m in SOUND] + [("etb", dict(mask=m, center_at=c)) for m, c in ETB])
@pytest.mark.parametrize("name, model, x", CHAINS, ids=[c[0] for c in CHAINS])
def test_graph_walkers_equal_the_chain_methods(name, model, x, method, kw, device):
    """Two implementations of each method: the chain one (what bounds() takes here) and the graph one."""
    model, x = on(device, model.double().eval(), x.double())
    want = etbkernels.bounds(model, x, EPS, method=method, **kw)
    graph = build_graph(model, x)
    r = torch.full_like(x, EPS)
    got = dag_methods.bounds(graph, x, r, method, kw.get("mask", "etb"), kw.get("center_at", "output"), None,
                             None, None)[-1]
    scale = 1 + want.upper.abs().max().item()
    if method == "crown":  # the chain's full CROWN also intersects every layer with IBP: never looser
        assert bool((got.lower.reshape(want.lower.shape) <= want.lower + 1e-12 * scale).all())
        assert bool((got.upper.reshape(want.upper.shape) >= want.upper - 1e-12 * scale).all())
        return
    torch.testing.assert_close(got.lower.reshape(want.lower.shape), want.lower, rtol=0, atol=1e-12 * scale)
    torch.testing.assert_close(got.upper.reshape(want.upper.shape), want.upper, rtol=0, atol=1e-12 * scale)


@pytest.mark.parametrize("make", [resnet, cnn_maxpool])
def test_zoo_graph_models_train_shapes_and_bound(make, device):
    """The model zoo's graph models: MNIST-shaped, every method runs, sound ones contain f(x)."""
    model, x = on(device, make().eval(), torch.rand(2, 1, 28, 28))
    y = model(x)
    assert y.shape == (2, 10)
    for method in ["ibp", "crown-ibp"]:
        b = etbkernels.bounds(model, x, 0.01, method=method)
        assert bool(((b.lower <= y + 1e-4) & (y <= b.upper + 1e-4)).all())
    b = etbkernels.bounds(model, x, 0.01, mask="ibp")
    assert b.lower.shape == y.shape and torch.isfinite(b.lower).all()
