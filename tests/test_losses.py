"""Losses and schedules, checked against their formulas written out by hand."""
import math

import pytest
import torch

from etbkernels.losses import (LinearRamp, etb_release_loss, ibp_paper_loss, margin_worst_logits,
                               worst_case_logits)


def test_etb_release_loss_by_hand():
    logits = torch.tensor([[2.0, 0.5, -1.0]], dtype=torch.float64)
    radius = torch.tensor([[0.3, 0.2, 0.1]], dtype=torch.float64)
    y = torch.tensor([0])
    z = torch.tensor([1.7, 0.7, -0.9], dtype=torch.float64)
    assert torch.equal(worst_case_logits(logits, radius, y)[0], z)
    ce = lambda v, k: -v[k] + torch.logsumexp(v, 0)  # noqa: E731
    expected = ce(logits[0], 0) + 0.5 * ce(z / (2.0 * 1.7), 0)
    got = etb_release_loss(logits, radius, y, lam=0.5, temperature=2.0)
    assert math.isclose(got.item(), expected.item(), rel_tol=1e-12)


def test_ibp_paper_loss_by_hand_and_grad():
    logits = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    margins = torch.randn(4, 5, dtype=torch.float64)
    y = torch.tensor([0, 3, 4, 1])
    z = -margins.clone()
    z[torch.arange(4), y] = 0
    assert torch.equal(margin_worst_logits(margins, y), z)
    loss = ibp_paper_loss(logits, margins, y, kappa=0.25)
    expected = 0.25 * torch.nn.functional.cross_entropy(logits, y) + 0.75 * torch.nn.functional.cross_entropy(z, y)
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-12)
    loss.backward()
    assert logits.grad.abs().sum() > 0


def test_loss_bad_input():
    logits, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="bounds must have the logits' shape"):
        etb_release_loss(logits, torch.rand(3, 5), y)
    with pytest.raises(ValueError, match="labels must be int64"):
        etb_release_loss(logits, torch.rand(3, 4), y.float())
    with pytest.raises(ValueError, match="temperature must be > 0"):
        etb_release_loss(logits, torch.rand(3, 4), y, temperature=0)
    with pytest.raises(ValueError, match=r"kappa must be in \[0, 1\]"):
        ibp_paper_loss(logits, torch.rand(3, 4), y, kappa=1.5)


def test_linear_ramp():
    eps = LinearRamp(0.0, 0.3, warmup=10, ramp=20)
    assert [eps(s) for s in (0, 9, 10)] == [0.0, 0.0, 0.0]
    assert math.isclose(eps(20), 0.15) and eps(30) == 0.3 and eps(10**6) == 0.3
    assert LinearRamp(1.0, 0.5)(0) == 0.5
    with pytest.raises(ValueError, match="warmup and ramp must be >= 0"):
        LinearRamp(0, 1, warmup=-1)
