"""etbkernels.nn.BoundedModel: forward unchanged, bounds equal the bounds() API, eps through Normalize, losses."""
import doctest

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import etbkernels
import etbkernels.nn as enn
from etbkernels import Normalize, margin_spec
from etbkernels.losses import etb_release_loss, ibp_paper_loss, margin_worst_logits


def _cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.ReLU(),
                         nn.Linear(16, 10))


def _data(n=6):
    return torch.rand(n, 1, 14, 14), torch.randint(0, 10, (n,))


def test_docstring_example():
    assert doctest.testmod(enn, raise_on_error=False).failed == 0
    assert etbkernels.BoundedModel is enn.BoundedModel


def test_forward_is_the_models_own():
    net = nn.Sequential(Normalize([0.3], [0.2]), *_cnn())
    bm = enn.BoundedModel(net, eps=0.1)
    x, y = _data()
    assert torch.equal(bm(x), net(x))
    logits, b = bm(x, return_bounds=True)
    assert torch.equal(logits, net(x))
    assert b.lower.shape == (6, 10) and bool((b.lower <= logits + 1e-5).all() and (logits <= b.upper + 1e-5).all())
    # the wrapped model's parameters are the module's parameters (optimizers see them)
    assert [p for p in bm.parameters()] == [p for p in net.parameters()]


@pytest.mark.parametrize("method,mask", [("etb", None), ("etb", "ibp"), ("ibp", None), ("crown-ibp", None),
                                         ("crown-forward", None), ("crown", None)])
def test_bounds_equal_the_api(method, mask):
    net = _cnn()
    x, y = _data()
    bm = enn.BoundedModel(net, method=method, eps=0.05, mask=mask, clip=(0.0, 1.0))
    kw = {} if mask is None else {"mask": mask}
    ref = etbkernels.bounds(net, x, 0.05, method=method, clip=(0.0, 1.0), **kw)
    got = bm.bounds(x)
    assert torch.equal(got.lower, ref.lower) and torch.equal(got.upper, ref.upper)
    refm = etbkernels.bounds(net, x, 0.02, method=method, clip=(0.0, 1.0), spec=margin_spec(y, 10), **kw)
    gotm = bm.bounds(x, 0.02, labels=y)
    assert gotm.lower.shape == (6, 9) and torch.equal(gotm.lower, refm.lower)
    # a per-call method override
    assert torch.equal(bm.bounds(x, method="ibp").upper,
                       etbkernels.bounds(net, x, 0.05, method="ibp", clip=(0.0, 1.0)).upper)


def test_ibp_margins_contain_sampled_points():
    net = _cnn().double()
    x, y = _data(4)
    x = x.double()
    bm = enn.BoundedModel(net, method="ibp", eps=0.03, clip=(0.0, 1.0))
    m = bm.bounds(x, labels=y)
    spec = margin_spec(y, 10, dtype=torch.float64)
    for _ in range(20):
        xs = (x + (torch.rand_like(x) * 2 - 1) * 0.03).clamp(0, 1)
        v = (spec @ net(xs).unsqueeze(-1)).squeeze(-1)
        assert bool((v >= m.lower - 1e-9).all() and (v <= m.upper + 1e-9).all())


@pytest.mark.parametrize("method", ["ibp", "etb"])
def test_eps_in_pixels_through_normalize(method):
    """eps is given before Normalize: equal to eps/std on the normalized input of the bare network."""
    torch.manual_seed(1)
    net = _cnn().double()
    mean, std = 0.1307, 0.3081
    full = nn.Sequential(Normalize([mean], [std]), *net).double()
    x = torch.rand(5, 1, 14, 14, dtype=torch.float64)
    a = enn.BoundedModel(full, method=method, eps=0.1).bounds(x)
    b = etbkernels.bounds(net, (x - mean) / std, 0.1 / std, method=method)
    assert torch.allclose(a.lower, b.lower, atol=1e-9) and torch.allclose(a.upper, b.upper, atol=1e-9)
    # and it is not the same as using eps unscaled on the normalized input
    c = etbkernels.bounds(net, (x - mean) / std, 0.1, method=method)
    assert not torch.allclose(a.radius, c.radius, rtol=1e-3)


def test_robust_losses_match_the_formulas():
    net = _cnn()
    x, y = _data(8)
    bm = enn.BoundedModel(net, eps=0.05, mask="ibp", clip=(0.0, 1.0))
    loss, logits = bm.robust_loss(x, y, lam=0.7, temperature=2.0)
    b = bm.bounds(x)
    assert torch.allclose(loss, etb_release_loss(net(x), b.radius, y, lam=0.7, temperature=2.0))
    loss.backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in net.parameters())
    assert any(float(p.grad.abs().sum()) > 0 for p in net.parameters())

    loss2, _ = bm.robust_loss(x, y, loss="ibp_paper", kappa=0.3)
    m = bm.bounds(x, labels=y)
    # rebuild the full (N, K) margin lower bounds by hand, class by class
    full = torch.zeros(8, 10)
    for n in range(8):
        others = [j for j in range(10) if j != int(y[n])]
        full[n, others] = m.lower[n]
    assert torch.allclose(loss2, ibp_paper_loss(net(x), full, y, kappa=0.3))
    assert torch.allclose(margin_worst_logits(full, y).gather(1, y[:, None]), torch.zeros(8, 1))


def test_ibp_paper_loss_at_eps0_is_cross_entropy():
    net = _cnn().double()
    x, y = _data(8)
    x = x.double()
    for method in ("ibp", "etb"):
        bm = enn.BoundedModel(net, method=method)
        loss, logits = bm.robust_loss(x, y, 0.0, loss="ibp_paper", kappa=0.2)
        assert torch.allclose(loss, F.cross_entropy(net(x), y), atol=1e-10)
        loss_big, _ = bm.robust_loss(x, y, 0.1, loss="ibp_paper", kappa=0.2)
        assert loss_big.item() > loss.item()  # a wider box can only make the worst case worse


def test_errors():
    net = _cnn()
    x, y = _data()
    with pytest.raises(ValueError, match="method must be"):
        enn.BoundedModel(net, method="crown-full")
    with pytest.raises(ValueError, match="no eps given"):
        enn.BoundedModel(net).bounds(x)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        enn.BoundedModel(net, eps=-1.0)
    with pytest.raises(ValueError, match="mask and center_at"):
        enn.BoundedModel(net, method="ibp", mask="ibp")
    with pytest.raises(ValueError, match="loss must be one of"):
        enn.BoundedModel(net, eps=0.1).robust_loss(x, y, loss="trades")
    with pytest.raises(ValueError, match="Tanh"):
        enn.BoundedModel(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh()), eps=0.1).bounds(x)
