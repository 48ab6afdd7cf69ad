"""Property-based tests (hypothesis) for whole-network bounds: random small MLPs and CNNs.

Drawn: widths 1-8, conv kernel sizes, strides and padding, batch size, eps, input scale and
weights. CI runs the bounded, derandomized profile from conftest.py.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import etbkernels as E
from etbkernels.testing import box_points

pytestmark = pytest.mark.usefixtures("one_thread")

width = st.integers(1, 8)
# (method, mask): IBP, CROWN-IBP, CROWN's forward mode, full CROWN, ETB with its own blockwise masks (forward),
# ETB with IBP masks (backward rows)
VARIANTS = [dict(method="ibp"), dict(method="crown-ibp"), dict(method="crown-forward"), dict(method="crown"),
            dict(method="etb", mask="etb"), dict(method="etb", mask="ibp")]


def _init(model: nn.Sequential, seed: int, dtype) -> nn.Sequential:
    """Weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2), from ``seed`` alone."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model:
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=torch.float64) / fan_in ** 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g, dtype=torch.float64) * 0.1)
    return model.to(dtype).eval()


@st.composite
def mlps(draw):
    sizes = [draw(width) for _ in range(draw(st.integers(2, 4)))] + [draw(width)]
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]), (sizes[0],)


@st.composite
def cnns(draw):
    C, H, W = draw(st.integers(1, 3)), draw(st.integers(3, 7)), draw(st.integers(3, 7))
    layers, shape = [], (C, H, W)
    for _ in range(draw(st.integers(1, 2))):
        k, s, p = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(0, 1))
        if min(shape[1:]) + 2 * p < k:
            k = 1
        out = draw(width)
        layers += [nn.Conv2d(shape[0], out, k, stride=s, padding=p), nn.ReLU()]
        shape = (out, (shape[1] + 2 * p - k) // s + 1, (shape[2] + 2 * p - k) // s + 1)
    flat = shape[0] * shape[1] * shape[2]
    hidden = draw(width)
    layers += [nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, draw(width))]
    return nn.Sequential(*layers), (C, H, W)


@st.composite
def cases(draw, dtypes=(torch.float64,)):
    """(model, x, eps): a random MLP or CNN and a batch of box centres in its input shape."""
    model, in_shape = draw(st.one_of(mlps(), cnns()))
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**31 - 1))
    model = _init(model, seed, dtype)
    N = draw(st.integers(1, 4))
    scale = draw(st.sampled_from([0.1, 1.0, 10.0]))
    g = torch.Generator().manual_seed(seed + 1)
    x = (torch.randn((N,) + in_shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    eps = draw(st.sampled_from([0.0, 1e-3, 0.05, 0.5]))
    return model, x, eps


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["ibp", "crown-ibp", "crown-forward", "crown"])  # the sound methods
@settings(deadline=None)
@given(case=cases())
def test_sound_methods_contain_outputs_at_sampled_points_and_vertices(method, case):
    model, x, eps = case
    b = E.bounds(model, x, eps, method=method)
    flat = x.reshape(x.shape[0], -1)
    pts = box_points(flat, torch.full_like(flat, eps), 32)  # (32, N, n): half of them vertices
    y = model(pts.reshape((-1,) + x.shape[1:])).reshape(pts.shape[0], x.shape[0], -1)
    slack = 1e-9 * (1 + y.abs())
    assert bool((y >= b.lower - slack).all()) and bool((y <= b.upper + slack).all())


@settings(deadline=None)
@given(cases(dtypes=(torch.float32, torch.float64)))
def test_lower_le_upper(case):
    model, x, eps = case
    for kw in VARIANTS:
        b = E.bounds(model, x, eps, **kw)
        assert bool((b.lower <= b.upper).all()) and bool((b.radius >= 0).all()), kw


@settings(deadline=None)
@given(cases())
def test_zero_eps_gives_the_output(case):
    model, x, _ = case
    for kw in VARIANTS:
        b = E.bounds(model, x, 0.0, **kw)
        _close(b.lower, model(x))
        _close(b.upper, model(x))


@settings(deadline=None)
@given(cases(), st.sampled_from(["strided", "channels_last", "expanded"]))
def test_layout_invariance(case, layout):
    """Contiguous, strided, channels-last and expanded inputs give the same bounds."""
    model, x, eps = case
    if layout == "strided":
        wide = torch.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)
        wide[..., ::2] = x
        other = wide[..., ::2]
    elif layout == "channels_last" and x.dim() == 4:
        other = x.contiguous(memory_format=torch.channels_last)
    else:  # expanded: every sample is the first one
        x = x[:1].expand(x.shape)
        other, x = x, x.contiguous()
    for kw in VARIANTS:
        a, b = E.bounds(model, x, eps, **kw), E.bounds(model, other, eps, **kw)
        _close(b.lower, a.lower)
        _close(b.upper, a.upper)


@settings(deadline=None)
@given(cases())
def test_batch_equals_per_sample(case):
    model, x, eps = case
    for kw in VARIANTS:
        batch = E.bounds(model, x, eps, **kw)
        for i in range(x.shape[0]):
            one = E.bounds(model, x[i:i + 1], eps, **kw)
            _close(one.lower, batch.lower[i:i + 1])
            _close(one.upper, batch.upper[i:i + 1])
