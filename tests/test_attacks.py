"""Attacks: PGD against labels finds the analytic worst case of a linear model; the range attack
stays inside its box and reaches the exact extremes of a linear map."""
import pytest
import torch

from etbkernels.attacks import pgd_attack, pgd_output_range


def test_pgd_matches_linear_worst_case():
    torch.manual_seed(0)
    lin = torch.nn.Linear(20, 2).double()
    x = torch.randn(300, 20, dtype=torch.float64)
    y = lin(x).argmax(1)  # all clean-correct
    eps = 0.05
    w = lin.weight.detach()
    margin = (lin(x).gather(1, y[:, None]) - lin(x).gather(1, 1 - y[:, None])).squeeze(1)
    worst = margin - eps * (w[0] - w[1]).abs().sum()  # the exact L-inf worst-case margin
    x_adv, still = pgd_attack(lin, x, y, eps, steps=10, clip=None)
    assert torch.equal(still, (worst > 0).detach())
    assert ((x_adv - x).abs() <= eps + 1e-12).all()
    assert 0 < still.float().mean() < 1  # the case is not trivial


def test_pgd_respects_clip_and_bad_args():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(5, 1, 4, 4), torch.randint(0, 3, (5,))
    x_adv, _ = pgd_attack(model, x, y, 0.3, steps=5)
    assert (x_adv >= 0).all() and (x_adv <= 1).all() and ((x_adv - x).abs() <= 0.3 + 1e-6).all()
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="eps must be finite and >= 0"):
            pgd_attack(model, x, y, bad)
    for bad in (0.0, -0.01, float("nan")):
        with pytest.raises(ValueError, match="step_size must be finite and > 0"):
            pgd_attack(model, x, y, 0.1, step_size=bad)
    with pytest.raises(ValueError, match="5 samples but y has 4"):
        pgd_attack(model, x, y[:4], 0.1)


def test_output_range_reaches_linear_extremes():
    torch.manual_seed(1)
    lin = torch.nn.Linear(6, 4).double()
    c = torch.randn(3, 6, dtype=torch.float64)
    r = torch.rand(3, 6, dtype=torch.float64) * 0.2
    found_min, found_max = pgd_output_range(lin, c - r, c + r, steps=4)  # 4 steps of width/4 reach any vertex
    exact_radius = r @ lin.weight.detach().abs().T
    center = lin(c).detach()
    torch.testing.assert_close(found_max, center + exact_radius)
    torch.testing.assert_close(found_min, center - exact_radius)
    with pytest.raises(ValueError, match="need lower_in <= upper_in, without NaN"):
        pgd_output_range(lin, c + r + 1, c - r)
    with pytest.raises(ValueError, match="need lower_in <= upper_in, without NaN"):
        pgd_output_range(lin, c - r, (c + r).index_fill(1, torch.tensor([0]), float("nan")))
    for kw in (dict(restarts=0), dict(steps=-1), dict(step_frac=float("nan")), dict(step_frac=-0.1)):
        with pytest.raises(ValueError, match="restarts >= 1 and a finite step_frac"):
            pgd_output_range(lin, c - r, c + r, **kw)


def test_pgd_attack_on_an_input_that_requires_grad():
    """x from a graph (e.g. a training batch that requires grad): the same points and verdicts as
    on its detached copy, and no error from the points' own graph."""
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(6, 1, 4, 4), torch.randint(0, 3, (6,))
    a = pgd_attack(model, x, y, 0.2, steps=3)
    b = pgd_attack(model, x.clone().requires_grad_(True), y, 0.2, steps=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not b[0].requires_grad
