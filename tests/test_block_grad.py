"""Gradients: gradcheck in float64 for every differentiable argument, and agreement with the
reference's autograd in float32 on larger blocks."""
import pytest
import torch

import etbkernels as E
from etbkernels import reference as R
from etbkernels.testing import devices, random_block


def _leaves(blk):
    names = ["center", "radius", "w1", "b1", "w2", "b2"]
    vals = [t.detach().clone().requires_grad_(True) if t is not None else None for t in blk.args()]
    return dict(zip(names, vals))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("center_at", ["linear", "output"])
@pytest.mark.parametrize("shape", [(1, 3, 4, 2), (4, 7, 5, 6), (3, 11, 13, 17)], ids=str)
def test_gradcheck_etb(shape, center_at, device, cpu_strategy):
    blk = random_block(*shape, device=device, eps=0.5, seed=7)
    blk.radius = blk.radius + 0.05  # keep the box away from r = 0 under finite differences
    a = _leaves(blk)

    def f(c, r, w1, b1, w2, b2):
        b = E.etb_block(c, r, w1, b1, w2, b2, center_at=center_at)
        return b.lower, b.upper

    assert torch.autograd.gradcheck(f, tuple(a.values()), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", devices())
def test_gradcheck_etb_given_mask_no_bias(device):
    blk = random_block(5, 6, 7, 4, device=device, bias=False, eps=0.5, seed=2)
    mask = torch.rand(5, 7, device=device) < 0.6
    a = _leaves(blk)
    f = lambda c, r, w1, w2: tuple(E.etb_block(c, r, w1, None, w2, None, mask=mask))  # noqa: E731
    assert torch.autograd.gradcheck(f, (a["center"], a["radius"], a["w1"], a["w2"]), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("shape", [(1, 3, 4, 2), (4, 7, 5, 6)], ids=str)
def test_gradcheck_ibp(shape, device):
    blk = random_block(*shape, device=device, eps=0.5, seed=5)
    blk.radius = blk.radius + 0.05
    a = _leaves(blk)
    f = lambda *args: tuple(E.ibp_block(*args))  # noqa: E731
    assert torch.autograd.gradcheck(f, tuple(a.values()), eps=1e-6, atol=1e-6)


def test_gradcheck_scalar_and_per_feature_radius():
    blk = random_block(3, 5, 6, 4, seed=9)
    eps = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    per_feature = torch.rand(5, dtype=torch.float64).add(0.05).requires_grad_(True)
    for r in (eps, per_feature):
        f = lambda rr: tuple(E.etb_block(blk.center, rr, blk.w1, blk.b1, blk.w2, blk.b2))  # noqa: E731
        assert torch.autograd.gradcheck(f, (r,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("center_at", ["linear", "output"])
@pytest.mark.parametrize("shape", [(33, 100, 129, 70), (2, 257, 64, 300)], ids=str)
def test_grads_match_reference_autograd_float32(shape, center_at, cpu_strategy):
    blk = random_block(*shape, dtype=torch.float32, eps=0.2, seed=11)
    a, b = _leaves(blk), _leaves(blk)
    mask = E.ops.etb_block(*blk.args(), None, False)[2]
    out = E.etb_block(*a.values(), center_at=center_at)
    ref = R.etb_block_ref(*b.values(), mask=mask, center_at=center_at)
    g_c, g_r = torch.randn_like(out.center), torch.randn_like(out.radius)
    (out.center * g_c + out.radius * g_r).sum().backward()
    (ref.center * g_c + ref.radius * g_r).sum().backward()
    for name in a:
        torch.testing.assert_close(a[name].grad, b[name].grad, rtol=1e-4, atol=1e-4, msg=name)


def test_mask_gets_no_gradient_and_only_needed_outputs():
    blk = random_block(4, 6, 5, 3)
    a = _leaves(blk)
    mask = torch.ones(4, 5, dtype=torch.float64, requires_grad=True)
    E.etb_block(*a.values(), mask=mask).radius.sum().backward()
    assert mask.grad is None
    assert a["center"].grad is not None and torch.equal(a["center"].grad, torch.zeros_like(a["center"]))
    assert a["radius"].grad.abs().sum() > 0
