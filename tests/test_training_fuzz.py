"""Fuzz/property checks of the training-facing API (docs/training.md, docs/math.md "Training losses"
and "Soundness and what to report"): the robust losses against their formulas written out by hand in
float64, BoundedModel against etbkernels.bounds, the PGD attacks' invariants, the evaluation's numbers
against a per-sample recomputation, and the training loop against a hand-written loop.

The bugs it found are regression tests, each with its reproduction in a comment.
"""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import etbkernels
from etbkernels import Normalize, margin_spec
from etbkernels.attacks import pgd_attack, pgd_output_range
from etbkernels.nn import BoundedModel

pytestmark = pytest.mark.usefixtures("one_thread")

#: every bound method BoundedModel accepts, with the ETB mask variants
METHODS = [("etb", {}), ("etb", {"mask": "ibp"}), ("etb", {"mask": "etb"}),
           ("etb", {"mask": "etb", "center_at": "linear"}), ("ibp", {}), ("crown-ibp", {}),
           ("crown-forward", {}), ("crown", {})]
METHOD_IDS = ["etb", "etb-maskibp", "etb-masketb", "etb-linear", "ibp", "crown-ibp", "crown-forward", "crown"]


# ------------------------------------------------------------------------------------------ by hand
def _box(x, eps, clip):
    lo, hi = x - eps, x + eps
    if clip is not None:
        lo, hi = lo.clamp(*clip), hi.clamp(*clip)
    return (lo + hi) / 2, (hi - lo) / 2


def _hand_ibp(net, x, eps, clip):
    """IBP of Flatten-Linear-ReLU-Linear (docs/math.md "IBP for the block"): logit centre/radius and the hidden interval."""
    l1, l2 = net[1], net[3]
    mu, r = _box(x.flatten(1), eps, clip)
    c1, r1 = mu @ l1.weight.T + l1.bias, r @ l1.weight.abs().T
    a, b = torch.relu(c1 - r1), torch.relu(c1 + r1)
    c, rr = (a + b) / 2, (b - a) / 2
    return c @ l2.weight.T + l2.bias, rr @ l2.weight.abs().T, (c, rr)


def _hand_etb_rows(net, x, eps, clip):
    """ETB of the block with IBP masks (= blockwise masks for one hidden layer): P_n = W2 S_n W1, r, f(mu)."""
    l1, l2 = net[1], net[3]
    mu, r = _box(x.flatten(1), eps, clip)
    c1, r1 = mu @ l1.weight.T + l1.bias, r @ l1.weight.abs().T
    s = (c1 + r1 > 0).to(x.dtype)
    P = torch.einsum("ji,ni,ik->njk", l2.weight, s, l1.weight)
    return P, r, net(mu.reshape(x.shape))


def _ce(v, k):
    return -v[k] + torch.logsumexp(v, 0)


def _hand_release(logits, radius, y, lam, T):
    """docs/math.md: CE(f(x), y) + lam * CE(z~ / (T max_j |z~_j|), y), z~_j = f_j + r_j (j != y), z~_y = f_y - r_y."""
    tot = 0.0
    for n in range(len(y)):
        k = int(y[n])
        z = torch.stack([logits[n, j] - radius[n, j] if j == k else logits[n, j] + radius[n, j]
                         for j in range(logits.shape[1])])
        tot = tot + _ce(logits[n], k) + lam * _ce(z / (T * z.abs().max()), k)
    return tot / len(y)


def _hand_ibp_paper(logits, margin_lower, y, kappa):
    """kappa CE(f(x), y) + (1 - kappa) CE(z~, y), z~_j = -lower(z_y - z_j) (j != y), z~_y = 0.

    ``margin_lower[n]`` is a dict j -> lower bound of z_y - z_j."""
    tot = 0.0
    for n in range(len(y)):
        k = int(y[n])
        z = torch.stack([torch.zeros((), dtype=logits.dtype) if j == k else -margin_lower[n][j]
                         for j in range(logits.shape[1])])
        tot = tot + kappa * _ce(logits[n], k) + (1 - kappa) * _ce(z, k)
    return tot / len(y)


def _mlp(n=6, h=7, K=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(n, h), nn.ReLU(), nn.Linear(h, K)).double()


@pytest.mark.parametrize("clip", [None, (0.0, 1.0)])
@pytest.mark.parametrize("eps", [0.0, 0.07])
def test_losses_by_hand_ibp_and_etb_block(clip, eps):
    """Both losses from bounds computed by hand (docs/math.md formulas) for IBP and ETB (both masks) on a block."""
    torch.manual_seed(3)
    net = _mlp()
    x = torch.rand(5, 1, 6, dtype=torch.float64)
    x[0] = 0.0  # on the clip boundary: the clipped box is not centred on x
    y = torch.tensor([0, 3, 1, 3, 0])
    f = net(x)
    # IBP
    bm = BoundedModel(net, method="ibp", eps=eps, clip=clip)
    _, rad, (hc, hr) = _hand_ibp(net, x, eps, clip)
    loss, logits = bm.robust_loss(x, y, loss="release", lam=0.6, temperature=1.7)
    assert torch.equal(logits, f)
    assert math.isclose(loss.item(), _hand_release(f, rad, y, 0.6, 1.7).item(), rel_tol=1e-12, abs_tol=1e-12)
    W, b = net[3].weight, net[3].bias
    low = [{j: hc[n] @ (W[y[n]] - W[j]) + b[y[n]] - b[j] - hr[n] @ (W[y[n]] - W[j]).abs()
            for j in range(4) if j != y[n]} for n in range(5)]
    loss, _ = bm.robust_loss(x, y, loss="ibp_paper", kappa=0.3)
    assert math.isclose(loss.item(), _hand_ibp_paper(f, low, y, 0.3).item(), rel_tol=1e-12, abs_tol=1e-12)
    # ETB (one hidden layer: IBP masks and blockwise masks agree), centre at the real output f(mu)
    P, r, fmu = _hand_etb_rows(net, x, eps, clip)
    rad = torch.einsum("njk,nk->nj", P.abs(), r)
    low = [{j: fmu[n, y[n]] - fmu[n, j] - (P[n, y[n]] - P[n, j]).abs() @ r[n] for j in range(4) if j != y[n]}
           for n in range(5)]
    for mask in ("ibp", "etb"):
        bm = BoundedModel(net, method="etb", eps=eps, clip=clip, mask=mask)
        loss, _ = bm.robust_loss(x, y, loss="release", lam=0.6, temperature=1.7)
        assert math.isclose(loss.item(), _hand_release(f, rad, y, 0.6, 1.7).item(), rel_tol=1e-12, abs_tol=1e-12)
        loss, _ = bm.robust_loss(x, y, loss="ibp_paper", kappa=0.3)
        assert math.isclose(loss.item(), _hand_ibp_paper(f, low, y, 0.3).item(), rel_tol=1e-12, abs_tol=1e-12)


def _cnn(K, dtype=torch.float64):
    return nn.Sequential(Normalize([0.3], [0.2]), nn.Conv2d(1, 3, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(27, 8),
                         nn.ReLU(), nn.Linear(8, K)).to(dtype)


def _labels(kind, N, K):
    if kind == "first":
        return torch.zeros(N, dtype=torch.long)
    if kind == "last":
        return torch.full((N,), K - 1, dtype=torch.long)
    return torch.arange(N) % K


@pytest.mark.parametrize("method,kw", METHODS, ids=METHOD_IDS)
def test_losses_equal_formula_for_every_method(method, kw):
    """Both losses equal their formulas with the method's own bounds (float64), for K = 2 and 6, batch 1 and 3,
    labels at the first/last class, eps 0 and > 0; at eps 0 the IBP-paper loss is CE; gradients are finite."""
    torch.manual_seed(5)
    for K in (2, 6):
        net = _cnn(K)
        for N in (1, 3):
            x = torch.rand(N, 1, 8, 8, dtype=torch.float64)
            for kind in ("first", "last", "mixed"):
                y = _labels(kind, N, K)
                for eps in (0.0, 0.05):
                    bm = BoundedModel(net, method=method, eps=eps, clip=(0.0, 1.0), **kw)
                    f = net(x)
                    rad = etbkernels.bounds(net, x, eps, method=method, clip=(0.0, 1.0), **kw).radius
                    m = etbkernels.bounds(net, x, eps, method=method, clip=(0.0, 1.0),
                                          spec=margin_spec(y, K, dtype=torch.float64), **kw).lower
                    low = [dict(zip([j for j in range(K) if j != y[n]], m[n])) for n in range(N)]
                    for loss_name, expected in (("release", _hand_release(f, rad, y, 0.5, 2.0)),
                                                ("ibp_paper", _hand_ibp_paper(f, low, y, 0.25))):
                        net.zero_grad()
                        loss, _ = bm.robust_loss(x, y, loss=loss_name, lam=0.5, temperature=2.0, kappa=0.25)
                        assert math.isclose(loss.item(), expected.item(), rel_tol=1e-10, abs_tol=1e-12), \
                            (K, N, kind, eps, loss_name)
                        loss.backward()
                        assert all(bool(torch.isfinite(p.grad).all()) for p in net.parameters())
                        if eps == 0:
                            assert rad.abs().max() == 0
                            if loss_name == "ibp_paper":
                                assert math.isclose(loss.item(), F.cross_entropy(f, y).item(), rel_tol=1e-10)


@pytest.mark.parametrize("method,kw", [("etb", {"mask": "ibp"}), ("ibp", {}), ("crown-ibp", {})],
                         ids=["etb", "ibp", "crown-ibp"])
def test_losses_when_one_class_wins_everywhere(method, kw):
    """A network that predicts class 0 for every input by a wide margin; labels are never 0. Both losses
    match the formulas (no overflow), and every margin lower bound is negative (nothing robust)."""
    torch.manual_seed(6)
    net = _mlp(K=5)
    with torch.no_grad():
        net[3].bias[0] = 40.0
    x = torch.rand(4, 1, 6, dtype=torch.float64)
    y = torch.tensor([1, 4, 2, 4])
    assert bool((net(x).argmax(1) == 0).all())
    bm = BoundedModel(net, method=method, eps=0.02, **kw)
    f = net(x)
    rad = bm.bounds(x).radius
    m = bm.bounds(x, labels=y).lower
    assert bool((m[:, 0] < -30).all())  # margin z_y - z_0 (class 0 comes first among j != y)
    low = [dict(zip([j for j in range(5) if j != y[n]], m[n])) for n in range(4)]
    loss, _ = bm.robust_loss(x, y, loss="release", lam=2.0, temperature=0.5)
    assert math.isclose(loss.item(), _hand_release(f, rad, y, 2.0, 0.5).item(), rel_tol=1e-12)
    loss, _ = bm.robust_loss(x, y, loss="ibp_paper", kappa=0.0)
    assert math.isclose(loss.item(), _hand_ibp_paper(f, low, y, 0.0).item(), rel_tol=1e-12)
    assert loss.item() > 30


# ------------------------------------------------------------------------------------ BoundedModel
def _cifar_like():
    mean, std = [0.4, 0.5, 0.3], [0.2, 0.25, 0.1]
    net = nn.Sequential(nn.Conv2d(3, 4, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(36, 10), nn.ReLU(),
                        nn.Linear(10, 5)).double()
    return nn.Sequential(Normalize(mean, std), *net).double(), net, torch.tensor(mean).view(1, 3, 1, 1).double(), \
        torch.tensor(std).view(1, 3, 1, 1).double()


@pytest.mark.parametrize("method,kw", METHODS, ids=METHOD_IDS)
def test_eps_in_pixels_per_channel_std_and_clip(method, kw):
    """eps through a 3-channel Normalize: the clipped pixel box, normalized, is the bare network's box
    (centre (mu - mean)/std, radius r/std per channel), for logits and margins."""
    torch.manual_seed(7)
    full, net, mean, std = _cifar_like()
    x = torch.rand(3, 3, 7, 7, dtype=torch.float64)
    x[0, :, :2] = 0.0
    x[1, :, 5:] = 1.0
    y = torch.tensor([0, 4, 2])
    for clip in (None, (0.0, 1.0)):
        bm = BoundedModel(full, method=method, eps=0.05, clip=clip, **kw)
        mu, r = _box(x, 0.05, clip)
        ref = etbkernels.bounds(net, (mu - mean) / std, r / std, method=method, **kw)
        got = bm.bounds(x)
        torch.testing.assert_close(got.lower, ref.lower, atol=1e-10, rtol=0)
        torch.testing.assert_close(got.upper, ref.upper, atol=1e-10, rtol=0)
        refm = etbkernels.bounds(net, (mu - mean) / std, r / std, method=method,
                                 spec=margin_spec(y, 5, dtype=torch.float64), **kw)
        torch.testing.assert_close(bm.bounds(x, labels=y).lower, refm.lower, atol=1e-10, rtol=0)


def test_bounded_model_module_behaviour():
    """state_dict / load_state_dict / deepcopy, train/eval propagation, forward keywords, per-call
    overrides (method, mask, center_at, chunk_size, eps), per-sample tensor eps, grad vs no_grad."""
    torch.manual_seed(8)
    full, _, _, _ = _cifar_like()
    x = torch.rand(3, 3, 7, 7, dtype=torch.float64)
    y = torch.tensor([0, 4, 2])
    bm = BoundedModel(full, method="etb", eps=0.05, mask="ibp", clip=(0.0, 1.0))
    assert list(bm.state_dict()) == ["model." + k for k in full.state_dict()]
    bm2 = copy.deepcopy(bm)
    assert (bm2.method, bm2.mask, bm2.eps, bm2.clip) == ("etb", "ibp", 0.05, (0.0, 1.0))
    assert torch.equal(bm2.bounds(x).lower, bm.bounds(x).lower)
    with torch.no_grad():
        bm2.model[1].weight.add_(1.0)
    assert not torch.equal(bm2(x), bm(x)) and not torch.equal(bm2.bounds(x).lower, bm.bounds(x).lower)
    bm2.load_state_dict(bm.state_dict())
    assert torch.equal(bm2(x), bm(x)) and torch.equal(bm2.bounds(x).upper, bm.bounds(x).upper)
    bm.eval()
    assert not any(m.training for m in full.modules())
    bm.train()
    assert all(m.training for m in full.modules())

    spec = margin_spec(y, 5, dtype=torch.float64)
    logits, b = bm(x, return_bounds=True, eps=0.02, labels=y)
    assert torch.equal(logits, full(x))
    assert torch.equal(b.lower, etbkernels.bounds(full, x, 0.02, mask="ibp", clip=(0.0, 1.0), spec=spec).lower)
    for over, ref_kw in (({"method": "ibp"}, {"method": "ibp"}), ({"mask": "etb"}, {"mask": "etb"}),
                         ({"center_at": "linear"}, {"mask": "ibp", "center_at": "linear"}),
                         ({"method": "crown-ibp"}, {"method": "crown-ibp"})):
        got = bm.bounds(x, 0.03, **over)
        ref = etbkernels.bounds(full, x, 0.03, clip=(0.0, 1.0), **ref_kw)
        assert torch.equal(got.lower, ref.lower) and torch.equal(got.upper, ref.upper), over
    # chunking and autograd do not change values
    with torch.no_grad():
        a = bm.bounds(x, labels=y)
    for c in (bm.bounds(x, labels=y), bm.bounds(x, labels=y, chunk_size=1)):
        torch.testing.assert_close(c.lower, a.lower, atol=1e-12, rtol=0)
    # per-sample eps as a tensor equals one call per sample; eps 0 gives radius 0
    e = torch.tensor([0.0, 0.02, 0.05], dtype=torch.float64).view(3, 1, 1, 1)
    one = torch.cat([bm.bounds(x[i:i + 1], float(e[i])).lower for i in range(3)])
    torch.testing.assert_close(bm.bounds(x, e).lower, one, atol=1e-12, rtol=0)
    assert bm.bounds(x, e).radius[0].abs().max() == 0
    # the constructor's eps is the default, a per-call 0 is honoured (not replaced by the default)
    assert bm.bounds(x, 0.0).radius.abs().max() == 0
    loss0, _ = bm.robust_loss(x, y, 0.0, loss="ibp_paper", kappa=0.3)
    assert math.isclose(loss0.item(), F.cross_entropy(full(x), y).item(), rel_tol=1e-12)


class _LossModule(nn.Module):
    def __init__(self, bm, loss):
        super().__init__()
        self.bm, self.loss = bm, loss

    def forward(self, x, y):
        return self.bm.robust_loss(x, y, loss=self.loss, lam=0.8, temperature=1.3, kappa=0.4)[0]


def test_robust_loss_gradcheck():
    """Both losses are differentiable in the weights (float64 gradcheck through BoundedModel)."""
    torch.manual_seed(9)
    net = _mlp(4, 5, 3)
    x = torch.rand(3, 1, 4, dtype=torch.float64)
    y = torch.tensor([0, 2, 1])
    for method, kw in (("etb", {"mask": "ibp"}), ("ibp", {}), ("crown-ibp", {})):
        for loss in ("release", "ibp_paper"):
            mod = _LossModule(BoundedModel(net, method=method, eps=0.03, **kw), loss)
            params = {k: v.detach().clone() for k, v in mod.named_parameters()}

            def call(weight, mod=mod, params=params):
                return torch.func.functional_call(mod, {**params, "bm.model.1.weight": weight}, (x, y))
            w0 = params["bm.model.1.weight"].clone().requires_grad_(True)
            assert torch.autograd.gradcheck(call, (w0,), eps=1e-6, atol=1e-6), (method, loss)


# ------------------------------------------------------------------------------------------ attacks
def test_pgd_attack_invariants():
    """Returned points lie in the eps ball (up to the rounding of x -+ eps) and the clip range; still_correct is the
    model's verdict at the returned point; more restarts (same seed) never un-break a sample; eps 0 is a no-op."""
    torch.manual_seed(10)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 20), nn.ReLU(), nn.Linear(20, 5)).double()
    for trial in range(6):
        x = torch.rand(40, 1, 4, 4, dtype=torch.float64)
        x[:6], x[6:12] = 0.0, 1.0  # on the clip boundary
        y = torch.arange(40) % 5
        eps = [0.0, 0.01, 0.05, 0.1, 0.2, 0.4][trial]
        for clip in ((0.0, 1.0), None):
            runs = {k: pgd_attack(net, x, y, eps, steps=6, restarts=k, clip=clip, seed=trial) for k in (1, 2, 3)}
            for xa, still in runs.values():
                # in the ball as the float box x -+ eps rounds it (exactly: up to half an ulp outside)
                assert bool(((xa >= x - eps) & (xa <= x + eps)).all())
                assert bool(((xa - x).abs() <= eps * (1 + 1e-12) + 1e-15).all())
                if clip is not None:
                    assert bool((xa >= 0).all() and (xa <= 1).all())
                with torch.no_grad():
                    assert torch.equal(still, net(xa).argmax(1) == y)
                    assert not bool((still & ~(net(x).argmax(1) == y)).any())  # robust implies clean-correct
            assert not bool((runs[2][1] & ~runs[1][1]).any()) and not bool((runs[3][1] & ~runs[2][1]).any())
            if eps == 0:
                assert torch.equal(runs[3][0], x) and torch.equal(runs[3][1], net(x).argmax(1) == y)


def test_pgd_output_range_values_are_attained_inside_the_box():
    """Every value pgd_output_range reports was produced by fn at a point of the box for that very
    (sample, output, direction); it lies inside sound IBP bounds; restarts only widen the found range."""
    torch.manual_seed(11)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)).double()
    N, m = 4, 3
    x = torch.rand(N, 1, 6, dtype=torch.float64)
    lo, hi = (x - 0.2).clamp(0, 1), (x + 0.2).clamp(0, 1)
    seen = []

    def fn(z):
        out = net(z)
        seen.append((z.detach(), out.detach()))
        return out

    fmin, fmax = pgd_output_range(fn, lo, hi, steps=6, restarts=2, seed=3)
    outs = []
    for z, out in seen[1:]:  # the first call only reads the output size
        zz = z.view(2 * m, N, 1, 6)
        assert bool(((zz >= lo) & (zz <= hi)).all())
        outs.append(out.view(2 * m, N, m))
    A = torch.stack(outs)
    for n in range(N):
        for j in range(m):
            assert fmax[n, j] == A[:, j, n, j].max() and fmin[n, j] == A[:, m + j, n, j].min()
    ib = etbkernels.bounds(net, x, 0.2, method="ibp", clip=(0.0, 1.0))
    assert bool((fmin >= ib.lower - 1e-12).all() and (fmax <= ib.upper + 1e-12).all())
    a = pgd_output_range(net, lo, hi, steps=3, restarts=1, seed=5)
    b = pgd_output_range(net, lo, hi, steps=3, restarts=3, seed=5)
    assert bool((b[0] <= a[0]).all() and (b[1] >= a[1]).all())
    d = pgd_output_range(net, x, x, steps=2)  # a degenerate box: the value at x
    torch.testing.assert_close(d[0], net(x).detach(), rtol=0, atol=0)
    torch.testing.assert_close(d[1], net(x).detach(), rtol=0, atol=0)


# Regression (fixed 2026-11-27): pgd_attack's docstring promises 'the strongest point found per sample',
# but for every sample the attack did not break it returns the clean input x unchanged (x_best starts as x
# and is only overwritten for misclassified points). Repro: lin = nn.Linear(20, 2).double(); x =
# randn(200, 20); y = lin(x).argmax(1); xa, still = pgd_attack(lin, x, y, 0.05, steps=10, clip=None) ->
# torch.equal(xa[still], x[still]) is True, CE(lin(xa)) == CE(lin(x)) < CE at the PGD point / worst vertex
# for all 176 unbroken samples. Using x_adv for PGD adversarial training would train on clean inputs.
def test_pgd_attack_returns_a_strong_point_for_unbroken_samples():
    torch.manual_seed(0)
    lin = nn.Linear(20, 2).double()
    x = torch.randn(200, 20, dtype=torch.float64)
    y = lin(x).argmax(1)
    xa, still = pgd_attack(lin, x, y, 0.05, steps=10, clip=None)
    assert bool(still.any())
    ce = lambda z: F.cross_entropy(lin(z), y, reduction="none")  # noqa: E731
    assert bool((ce(xa)[still] > ce(x)[still]).all())


# Regression (fixed 2026-11-27): pgd_attack accepts eps=nan and step_size=nan (only eps < 0 is refused)
# and returns NaN points, outside the eps ball, counted as 'broken'. Repro: pgd_attack(net, x, y,
# float('nan')) or pgd_attack(net, x, y, 0.3, step_size=float('nan')) -> x_adv has NaN, still_correct all
# False. Through the CLI, `eval RUN --pgd-step-size nan` is accepted and reports pgd_acc 0.16 <
# verified_acc 0.91 with verified_but_pgd_broken = 24 on 32 images (a spurious soundness failure); `--pgd-
# step-size -0.01` silently runs gradient descent (pgd_acc = clean_acc).
def test_pgd_attack_refuses_nan_eps_and_step():
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    x, y = torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError):
        pgd_attack(net, x, y, float("nan"), steps=2)
    with pytest.raises(ValueError):
        pgd_attack(net, x, y, 0.1, steps=2, step_size=float("nan"))


# Regression (fixed 2026-11-27): `python -m etbkernels eval RUN --pgd-step-size nan` (or a negative /
# infinite value) is accepted (type=float): docs/training.md says a bad option value exits with status 2
# naming the option; with NaN the evaluation reports verified_but_pgd_broken > 0 (see
# test_pgd_attack_refuses_nan_eps_and_step).
@pytest.mark.parametrize("value", ["nan", "-0.1"])
def test_cli_refuses_bad_pgd_step_size(value):
    from etbkernels.cli import build_parser
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["eval", "run", "--pgd-step-size", value])
    assert exc.value.code == 2


# ------------------------------------------------------------------------------------------ evaluation
DOC_FIELDS = ("clean_acc", "pgd_acc", "ibp_verified_acc", "crown_verified_acc", "crown_forward_verified_acc",
              "crown_full_verified_acc", "verified_acc", "etb_expected_acc", "etb_violation_rate",
              "etb_violation_rate_lower", "etb_violation_rate_images", "ibp_violation_rate", "etb_margin_width",
              "ibp_margin_width", "crown_margin_width", "crown_forward_margin_width", "crown_full_margin_width",
              "verified_but_pgd_broken", "settings")


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    """A 784-32-10 MLP checkpoint (Normalize first), trained nominally in-process on 1000 MNIST images."""
    from etbkernels.training.checkpoint import save_checkpoint
    from etbkernels.training.data import build_model, load_dataset
    from etbkernels.training.loop import TrainConfig

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("fuzz") / "run"
    cfg = TrainConfig(out=str(out), dataset="mnist", model="mlp", mlp_widths=[32], method="ibp", eps=0.02)
    model = build_model("mlp", "mnist", mlp_widths=[32])
    x, y = load_dataset("mnist", "train", None, 1000)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(3):
        for i in range(0, 1000, 100):
            loss = F.cross_entropy(model(x[i:i + 100]), y[i:i + 100])
            opt.zero_grad()
            loss.backward()
            opt.step()
    out.mkdir()
    state = {"config": cfg.to_dict(), "model": model.state_dict(), "optimizer": {}, "scheduler": {}, "rng": {},
             "epoch": 1, "step": 0, "history": []}
    save_checkpoint(state, out / "checkpoint.pt")
    return out, model.eval()


def test_evaluate_numbers_match_a_per_sample_recomputation(mnist_run):
    """Every accuracy, width and violation rate of evaluate() equals a per-sample recomputation from the
    documented definitions (two batches, the violation images spanning both); verified <= PGD <= clean
    per sample; a stronger attack breaks no verified image and finds no value outside the sound bounds."""
    from etbkernels.training.data import load_dataset
    from etbkernels.training.evaluate import evaluate

    run, model = mnist_run
    EPS, LIM, BS, VL, K = 0.02, 40, 16, 20, 10
    r = evaluate(run, eps=EPS, limit=LIM, batch_size=BS, pgd_steps=5, pgd_restarts=2, violation_limit=VL,
                 violation_steps=4, show_progress=False)
    assert all(k in r for k in DOC_FIELDS)
    assert r["settings"]["bounds_dtype"] == "float64" and r["settings"]["etb_mask"] == "ibp" and r["n"] == LIM
    m64 = copy.deepcopy(model).double()
    x, y = load_dataset("mnist", "test", None, LIM)
    x64 = x.double()
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    robust = torch.cat([pgd_attack(model, x[s:s + BS], y[s:s + BS], EPS, steps=5, restarts=2, seed=bi)[1]
                        for bi, s in enumerate(range(0, LIM, BS))])
    spec = margin_spec(y, K, dtype=torch.float64)
    with torch.no_grad():
        B = {m: etbkernels.bounds(m64, x64, EPS, method=m, spec=spec, clip=(0.0, 1.0))
             for m in ("ibp", "crown-ibp", "crown-forward")}
        E = etbkernels.bounds(m64, x64, EPS, method="etb", mask="ibp", spec=spec, clip=(0.0, 1.0))
    ok = {m: (b.lower > 0).all(1) for m, b in B.items()}
    anyv = ok["ibp"] | ok["crown-ibp"] | ok["crown-forward"]
    frac = lambda t: int(t.sum()) / LIM  # noqa: E731
    assert r["clean_acc"] == frac(clean) and r["pgd_acc"] == frac(robust)
    assert r["ibp_verified_acc"] == frac(ok["ibp"]) and r["crown_verified_acc"] == frac(ok["crown-ibp"])
    assert r["crown_forward_verified_acc"] == frac(ok["crown-forward"]) and r["verified_acc"] == frac(anyv)
    assert r["etb_expected_acc"] == frac((E.lower > 0).all(1))
    assert r["verified_but_pgd_broken"] == int((anyv & ~robust).sum()) == 0
    assert not bool((robust & ~clean).any())
    assert 0 < r["verified_acc"] < r["clean_acc"]  # the case is not trivial
    for key, b in (("etb", E), ("ibp", B["ibp"]), ("crown", B["crown-ibp"]), ("crown_forward", B["crown-forward"])):
        assert math.isclose(r[f"{key}_margin_width"], float((b.upper - b.lower).mean()), rel_tol=1e-9)
    # violation rates: the first VL images (16 from batch 0, 4 from batch 1), pairs = (image, margin)
    pairs = lower = images = ibp_pairs = 0
    for bi, (s, nv) in enumerate(((0, BS), (BS, VL - BS))):
        xv, yv = x64[s:s + nv], y[s:s + nv]
        sp = margin_spec(yv, K, dtype=torch.float64)

        def fn(z, yv=yv, nv=nv):
            yy = yv.repeat(max(z.shape[0] // nv, 1))[:z.shape[0]]
            return (margin_spec(yy, K, dtype=torch.float64) @ m64(z).unsqueeze(-1)).squeeze(-1)
        fmin, fmax = pgd_output_range(fn, (xv - EPS).clamp(0, 1), (xv + EPS).clamp(0, 1), steps=4, seed=bi)
        with torch.no_grad():
            Ev = etbkernels.bounds(m64, xv, EPS, mask="ibp", spec=sp, clip=(0.0, 1.0))
            Iv = etbkernels.bounds(m64, xv, EPS, method="ibp", spec=sp, clip=(0.0, 1.0))
        tol = 1e-6 * (1 + Ev.center.abs())
        below = fmin < Ev.lower - tol
        out = below | (fmax > Ev.upper + tol)
        pairs, lower, images = pairs + int(out.sum()), lower + int(below.sum()), images + int(out.any(1).sum())
        ibp_pairs += int(((fmin < Iv.lower - 1e-9) | (fmax > Iv.upper + 1e-9)).sum())
    assert r["violation_images"] == VL
    assert r["etb_violation_rate"] == pairs / (VL * (K - 1)) and r["etb_violation_rate_lower"] == lower / (VL * (K - 1))
    assert r["etb_violation_rate_images"] == images / VL and r["ibp_violation_rate"] == ibp_pairs == 0
    # a stronger attack (float64 model, more steps and restarts) breaks no verified image
    strong = pgd_attack(m64, x64, y, EPS, steps=30, restarts=3, seed=11)[1]
    assert not bool((anyv & ~strong).any())


def test_evaluate_at_eps0_every_accuracy_is_clean(mnist_run):
    from etbkernels.training.evaluate import evaluate

    run, _ = mnist_run
    r = evaluate(run, eps=0.0, limit=20, batch_size=20, pgd_steps=3, violation_limit=5, show_progress=False)
    assert r["clean_acc"] == r["pgd_acc"] == r["ibp_verified_acc"] == r["crown_verified_acc"] \
        == r["crown_forward_verified_acc"] == r["verified_acc"] == r["etb_expected_acc"]
    assert r["etb_margin_width"] == r["ibp_margin_width"] == 0.0 and r["verified_but_pgd_broken"] == 0


# ------------------------------------------------------------------------------------------ training loop
@pytest.mark.parametrize("method,loss", [("ibp", "ibp_paper"), ("etb", "release"), ("etb", "ibp_paper")])
def test_training_steps_equal_a_hand_written_loop(tmp_path, method, loss):
    """One epoch of `train` (4 steps, eps schedule 0.25,0.5 epochs: eps/kappa per step as documented) equals
    BoundedModel.robust_loss + Adam written out by hand, and the history's loss is the mean of the steps'."""
    from etbkernels.cli import main
    from etbkernels.training import load_checkpoint
    from etbkernels.training.data import build_model, load_dataset

    assert main(["train", "--dataset", "mnist", "--model", "mlp", "--mlp-widths", "16", "--limit", "64",
                 "--batch-size", "16", "--threads", "1", "--no-progress", "--method", method, "--loss", loss,
                 "--eps", "0.1", "--eps-schedule", "0.25,0.5", "--kappa", "0.5", "--lam", "0.7",
                 "--temperature", "1.5", "--seed", "4", "--out", str(tmp_path / "run")]) == 0
    st = load_checkpoint(tmp_path / "run")
    torch.manual_seed(4)
    x, y = load_dataset("mnist", "train", None, 64)
    model = build_model("mlp", "mnist", mlp_widths=[16])
    bm = BoundedModel(model, method=method, mask="ibp" if method == "etb" else None, clip=(0.0, 1.0))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(4 * 1_000_003 + 0))
    losses = []
    for step in range(4):  # warm-up round(0.25 * 4) = 1 step, ramp round(0.5 * 4) = 2 steps
        t = 0.0 if step < 1 else min(1.0, (step - 1) / 2)
        idx = perm[16 * step:16 * step + 16]
        lo, _ = bm.robust_loss(x[idx], y[idx], 0.1 * t, loss=loss, lam=0.7, temperature=1.5, kappa=1.0 - 0.5 * t)
        opt.zero_grad()
        lo.backward()
        opt.step()
        losses.append(lo.item())
    for k, v in st["model"].items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=1e-7)
    h = st["history"][0]
    assert math.isclose(h["loss"], sum(losses) / 4, rel_tol=1e-9) and h["eps"] == pytest.approx(0.1)
    assert h["kappa"] == (0.5 if loss == "ibp_paper" else None) and h["steps"] == 4
