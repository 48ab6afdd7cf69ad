"""Issue 19's training methods, API level: CROWN-IBP's and etb-interp's beta-interpolated margin loss,
etb-attack's loss, PGD adversarial training's loss, each against a float64 formula written out by hand
and with float64 gradcheck in a tiny net's weights; the stronger (any-step) PGD against the old one."""
import math

import pytest
import torch
from torch import nn

import etbkernels
from etbkernels import margin_spec
from etbkernels.attacks import default_step_size, pgd_attack
from etbkernels.losses import etb_attack_loss, interpolated_margin_lower
from etbkernels.nn import BoundedModel

pytestmark = pytest.mark.usefixtures("one_thread")
K = 3


def _net():
    torch.manual_seed(7)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, K)).double()


def _data(n=4):
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 1, 2, 3, generator=g, dtype=torch.float64), torch.randint(0, K, (n,), generator=g)


def _ce(v, k):
    """-log softmax(v)[k], written out: log sum_j exp(v_j) - v_k."""
    return torch.log(sum(torch.exp(v[j]) for j in range(len(v)))) - v[k]


def _hand_margin_loss(logits, lower, y, kappa):
    """kappa CE(f(x), y) + (1 - kappa) CE(z~, y), z~_j = -lower[n][j] (j != y), z~_y = 0; ``lower[n]``: dict j -> value."""
    tot = 0.0
    for n in range(len(y)):
        k = int(y[n])
        z = torch.stack([torch.zeros((), dtype=logits.dtype) if j == k else -lower[n][j] for j in range(K)])
        tot = tot + kappa * _ce(logits[n], k) + (1 - kappa) * _ce(z, k)
    return tot / len(y)


def _margin_lower(net, x, y, eps, method, **kw):
    """n -> {j: lower bound of z_y - z_j} from etbkernels.bounds with margin_spec (as the issue says)."""
    low = etbkernels.bounds(net, x, eps, method=method, spec=margin_spec(y, K, dtype=x.dtype), clip=(0.0, 1.0),
                            **kw).lower
    return [{j: low[n, i] for i, j in enumerate(j for j in range(K) if j != int(y[n]))} for n in range(len(y))]


# ------------------------------------------------------------------------------------------ formulas
@pytest.mark.parametrize("method,kw", [("crown-ibp", {}), ("etb", {"mask": "ibp"}), ("etb", {"mask": "etb"})],
                         ids=["crown-ibp", "etb-interp-maskibp", "etb-interp-masketb"])
@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_interpolated_margin_loss_equals_hand_formula(method, kw, beta):
    """lower = beta * (CROWN-IBP's or ETB's) + (1 - beta) * IBP's, then the IBP-paper loss (kappa 0.4)."""
    net, (x, y), eps = _net(), _data(), 0.07
    bm = BoundedModel(net, method=method, eps=eps, clip=(0.0, 1.0), **kw)
    loss, logits = bm.robust_loss(x, y, loss="ibp_paper", beta=beta, kappa=0.4)
    tight, ibp = _margin_lower(net, x, y, eps, method, **kw), _margin_lower(net, x, y, eps, "ibp")
    lower = [{j: beta * tight[n][j] + (1 - beta) * ibp[n][j] for j in tight[n]} for n in range(len(y))]
    want = _hand_margin_loss(net(x), lower, y, 0.4)
    assert math.isclose(loss.item(), want.item(), rel_tol=1e-12, abs_tol=1e-12)
    assert torch.equal(logits, net(x))
    # not vacuous: the two bounds differ, so beta changes the loss
    assert any(abs(float((tight[n][j] - ibp[n][j]).detach())) > 1e-6 for n in range(len(y)) for j in tight[n])


def test_interpolated_margin_lower_elementwise_and_refusals():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    out = interpolated_margin_lower(a, b, 0.25)
    for i in range(3):
        for j in range(4):
            assert out[i, j].item() == pytest.approx(0.25 * a[i, j].item() + 0.75 * b[i, j].item(), rel=1e-15)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="beta must be in \\[0, 1\\]"):
            interpolated_margin_lower(a, b, bad)
    with pytest.raises(ValueError, match="differ in shape"):
        interpolated_margin_lower(a, b[:, :3], 0.5)


def test_etb_attack_loss_equals_hand_formula():
    """CE part on min(ETB lower, attacked margin); penalty * mean over (n, j != y) of relu(ETB lower - attacked)."""
    g = torch.Generator().manual_seed(1)
    N = 5
    logits = torch.randn(N, K, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (N,), generator=g)
    etb = torch.randn(N, K, generator=g, dtype=torch.float64)
    att = torch.randn(N, K, generator=g, dtype=torch.float64)
    etb[torch.arange(N), y] = 5.0  # the y column is no margin: it must count for nothing
    att[torch.arange(N), y] = -5.0
    got = etb_attack_loss(logits, etb, att, y, kappa=0.3, penalty=0.7)
    lower = [{j: min(etb[n, j], att[n, j]) for j in range(K) if j != int(y[n])} for n in range(N)]
    over = sum(max(float(etb[n, j] - att[n, j]), 0.0) for n in range(N) for j in range(K) if j != int(y[n]))
    want = _hand_margin_loss(logits, lower, y, 0.3).item() + 0.7 * over / (N * (K - 1))
    assert over > 0 and math.isclose(got.item(), want, rel_tol=1e-12)
    with pytest.raises(ValueError, match="penalty must be finite and >= 0"):
        etb_attack_loss(logits, etb, att, y, kappa=0.3, penalty=-1.0)
    with pytest.raises(ValueError, match="attacked margins must have the logits' shape"):
        etb_attack_loss(logits, etb, att[:, :2], y, kappa=0.3)


def _attack_point(net, x, y, eps, seed, steps=4):
    was = net.training
    net.eval()
    x_adv, _ = pgd_attack(net, x, y, eps, steps=steps, clip=(0.0, 1.0), seed=seed)
    net.train(was)
    return x_adv


def test_etb_attack_robust_loss_equals_hand_formula():
    """robust_loss(loss="etb_attack"): ETB margin lower bounds, the margins at the PGD point of the same seed."""
    net, (x, y), eps = _net(), _data(), 0.2
    net.train()
    bm = BoundedModel(net, method="etb", mask="ibp", eps=eps, clip=(0.0, 1.0))
    loss, _ = bm.robust_loss(x, y, loss="etb_attack", kappa=0.6, penalty=2.0, attack_steps=4, seed=11)
    assert net.training  # the attack ran in eval mode; the mode is restored
    etb = _margin_lower(net, x, y, eps, "etb", mask="ibp")
    z = net(_attack_point(net, x, y, eps, 11))
    att = [{j: z[n, int(y[n])] - z[n, j] for j in etb[n]} for n in range(len(y))]
    lower = [{j: torch.minimum(etb[n][j], att[n][j]) for j in etb[n]} for n in range(len(y))]
    over = sum(torch.relu(etb[n][j] - att[n][j]) for n in range(len(y)) for j in etb[n]) / (len(y) * (K - 1))
    want = _hand_margin_loss(net(x), lower, y, 0.6) + 2.0 * over
    assert math.isclose(loss.item(), want.item(), rel_tol=1e-12)


def test_pgd_robust_loss_is_ce_at_the_attack_point():
    net, (x, y), eps = _net(), _data(6), 0.2
    net.train()
    bm = BoundedModel(net, eps=eps, clip=(0.0, 1.0))
    loss, logits = bm.robust_loss(x, y, loss="pgd", attack_steps=4, seed=5)
    assert net.training and not logits.requires_grad and torch.equal(logits, net(x).detach())
    z = net(_attack_point(net, x, y, eps, 5))
    want = sum(_ce(z[n], int(y[n])) for n in range(len(y))) / len(y)
    assert math.isclose(loss.item(), want.item(), rel_tol=1e-12)
    # the attack point really raises the loss over the clean one (the attack is not a no-op)
    clean = sum(_ce(net(x)[n], int(y[n])) for n in range(len(y))) / len(y)
    assert loss.item() > clean.item()
    # eps 0: no attack, the clean CE
    loss0, _ = bm.robust_loss(x, y, 0.0, loss="pgd")
    assert math.isclose(loss0.item(), clean.item(), rel_tol=1e-12)


def test_robust_loss_refusals():
    net, (x, y) = _net(), _data()
    bm = BoundedModel(net, eps=0.1)
    with pytest.raises(ValueError, match="beta must be in \\[0, 1\\] and goes with loss='ibp_paper' only"):
        bm.robust_loss(x, y, loss="release", beta=0.5)
    with pytest.raises(ValueError, match="beta must be in \\[0, 1\\]"):
        bm.robust_loss(x, y, loss="ibp_paper", beta=1.5)
    with pytest.raises(ValueError, match="method must be one of"):
        bm.robust_loss(x, y, loss="ibp_paper", method="crown-full")
    with pytest.raises(ValueError, match="one eps for the batch"):
        bm.robust_loss(x, y, torch.full((4, 1, 1, 1), 0.1, dtype=torch.float64), loss="pgd")


# ------------------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("method,loss,kw", [
    ("crown-ibp", "ibp_paper", dict(beta=0.4, kappa=0.3)),
    ("etb", "ibp_paper", dict(beta=0.4, kappa=0.3)),
    ("etb", "etb_attack", dict(kappa=0.3, penalty=1.5, attack_steps=3, seed=2)),
    ("etb", "pgd", dict(attack_steps=3, seed=2)),
], ids=["crown-ibp", "etb-interp", "etb-attack", "pgd"])
def test_gradcheck_in_the_weights(method, loss, kw):
    """float64 gradcheck of each new loss in both Linear layers' weights (the attack point is a
    constant of the loss; its sign steps do not flip under gradcheck's 1e-6 perturbations here)."""
    net, (x, y) = _net(), _data()
    layers = [net[1], net[3]]
    ws = [m.weight.detach().clone().requires_grad_(True) for m in layers]
    bm = BoundedModel(net, method=method, eps=0.08, clip=(0.0, 1.0), **({"mask": "ibp"} if method == "etb" else {}))

    def fn(*weights):
        for m, w in zip(layers, weights):
            del m.weight
            m.weight = w
        return bm.robust_loss(x, y, loss=loss, **kw)[0]

    assert torch.autograd.gradcheck(fn, tuple(ws), eps=1e-6, atol=1e-7)


def test_gradcheck_of_the_loss_functions_in_their_inputs():
    g = torch.Generator().manual_seed(4)
    N = 3
    logits, etb, att = (torch.randn(N, K, generator=g, dtype=torch.float64).requires_grad_(True) for _ in range(3))
    y = torch.randint(0, K, (N,), generator=g)
    assert torch.autograd.gradcheck(lambda a, b, c: etb_attack_loss(a, b, c, y, kappa=0.4, penalty=1.3),
                                    (logits, etb, att))
    assert torch.autograd.gradcheck(lambda a, b: interpolated_margin_lower(a, b, 0.35), (etb, att))


# ------------------------------------------------------------------------------------------ stronger PGD
def _nominal_cnn():
    torch.manual_seed(15)  # a net whose classes vary over the inputs (others predict one class everywhere)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 16), nn.ReLU(),
                         nn.Linear(16, 4))


class _Peak(nn.Module):
    """Two classes; class 1 wins only in a narrow slab |x_0 - 0.3| < 0.1: PGD steps wider than the slab
    jump across it, so a restart can visit a misclassified point and end on a correct one."""

    def forward(self, x):
        t = x.flatten(1)[:, :1] - 0.3
        z1 = 1 - 10 * (torch.relu(t) + torch.relu(-t))
        return torch.cat([torch.zeros_like(z1), z1], 1)


@pytest.mark.parametrize("which", ["cnn", "peak"])
def test_any_step_pgd_never_reports_more_robust_samples(which):
    """Same model, seed, starts and trajectories: any-step counts an image broken whenever the old rule
    (a restart's last point) does, and more often where PGD oscillates (the peak model). Every image it
    calls broken has a misclassified x_adv inside the box."""
    if which == "cnn":
        net, eps = _nominal_cnn(), 0.2
        x = torch.rand(200, 1, 4, 4, generator=torch.Generator().manual_seed(8))
    else:
        net, eps = _Peak(), 0.5
        x = torch.full((200, 1), 0.5)
    with torch.no_grad():
        y = net(x).argmax(1)  # all clean-correct
    fewer = []
    for seed in range(2):
        for steps, restarts, step_size in ((5, 1, 0.25), (8, 2, 0.15), (3, 1, None), (10, 1, None)):
            kw = dict(steps=steps, restarts=restarts, step_size=step_size, seed=seed)
            _, old = pgd_attack(net, x, y, eps, any_step=False, **kw)
            x_adv, new = pgd_attack(net, x, y, eps, **kw)
            assert not (new & ~old).any()  # new robust => old robust, per image
            fewer.append(int(old.sum() - new.sum()))
            with torch.no_grad():
                assert (net(x_adv).argmax(1)[~new] != y[~new]).all()
            assert ((x_adv - x).abs() <= eps + 1e-6).all() and (x_adv >= 0).all() and (x_adv <= 1).all()
    if which == "peak":  # the stronger attack finds images the old rule missed
        assert min(fewer) > 0
    else:
        assert old.sum() < len(y)  # the attack breaks some images of the CNN: the comparison is not vacuous


def test_default_step_size_rule():
    assert default_step_size(0.1, 40) == pytest.approx(0.025) and default_step_size(0.1, 5) == pytest.approx(0.05)
    assert default_step_size(0.0, 10) == 0.0
