"""ETB's trailing Linear layers formed lazily (etbkernels/network/etb_tail.py): the same bounds as
the full forward pass and the per-sample Jacobian reference, with fewer rows."""
import pytest
import torch
from torch import nn

from etbkernels.network import BoundsOptions, bounds, margin_spec, models
from etbkernels.network import etb_tail
from etbkernels.network.parse import parse_model
from network_ref import blockwise_jacobian_ref
from test_network_grad import gradcheck_bounds

torch.manual_seed(0)


def mlp3():  # t = 0: the base is the input itself
    return models.mlp((40, 31, 17, 5)).double()


def cnn_head():  # two hidden Linear layers after the convolutions: the base is dense (Flatten + Linear)
    return nn.Sequential(nn.Conv2d(1, 3, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 11), nn.ReLU(),
                         nn.Linear(11, 7), nn.ReLU(), nn.Linear(7, 4)).double()


def flat_relu_head():  # a ReLU right after Flatten: the base is still in patches form
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 3, 3, stride=2), nn.Flatten(), nn.ReLU(),
                         nn.Linear(3 * 3 * 3, 9), nn.ReLU(), nn.Linear(9, 3)).double()


def deep_mlp():  # forward first, lazy only for the last layers
    return models.mlp((64, 32, 32, 32, 32, 32, 3)).double()


CASES = [("mlp3", mlp3, (5, 40)), ("cnn_head", cnn_head, (3, 1, 9, 9)),
         ("flat_relu_head", flat_relu_head, (7, 1, 9, 9)), ("deep_mlp", deep_mlp, (2, 64))]


def _tail(model, shape):
    net = parse_model(model, shape[1:], torch.zeros(shape, dtype=torch.float64))
    return etb_tail.tail_start(net, net.out_shape[0]), len(net.stages)


@pytest.mark.parametrize("name,make,shape", CASES)
def test_cases_take_the_lazy_path(name, make, shape):
    t, L = _tail(make(), shape)
    assert t is not None and t <= L - 2


def test_tail_start_choices(monkeypatch):
    x = torch.zeros(1, 1, 28, 28)
    for model, want in [(models.mlp(), 0), (models.medium_cnn(), 5), (models.small_cnn(), None)]:
        assert etb_tail.tail_start(parse_model(model, (1, 28, 28), x), 10) == want
    net = parse_model(models.mlp(), (1, 28, 28), x)  # the benchmarks' baseline: the option off
    net.options = BoundsOptions(lazy_tail=False)
    assert etb_tail.tail_start(net, 10) is None
    # a deep MLP: forming the first layers' directions forward is cheaper than pulling rows back
    # through all of them
    t, L = _tail(deep_mlp(), (2, 64))
    assert 0 < t <= L - 2
    # no trailing Linear run with a hidden layer: ends with a conv stage
    conv_last = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3))
    assert etb_tail.tail_start(parse_model(conv_last, (1, 8, 8), torch.zeros(1, 1, 8, 8)), 10) is None


@pytest.mark.parametrize("name,make,shape", CASES)
@pytest.mark.parametrize("center_at", ["linear", "output"])
@pytest.mark.parametrize("eps", [0.0, 0.003, 0.05, 0.4])
def test_lazy_equals_full_forward_and_reference(name, make, shape, center_at, eps):
    model = make()
    x = torch.randn(shape, dtype=torch.float64)
    lazy = bounds(model, x, eps, center_at=center_at)
    full, _ = bounds(model, x, eps, center_at=center_at, return_layers=True)  # every layer: no lazy tail
    torch.testing.assert_close(lazy.lower, full.lower, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lazy.upper, full.upper, rtol=1e-10, atol=1e-12)
    (c_ref, r_ref), _ = blockwise_jacobian_ref(model, x, eps, center_at)
    torch.testing.assert_close(lazy.center, c_ref)
    torch.testing.assert_close(lazy.radius, r_ref)


@pytest.mark.parametrize("name,make,shape", CASES)
def test_lazy_with_spec(name, make, shape):
    model = make()
    x = torch.randn(shape, dtype=torch.float64)
    K = model(x).shape[1]
    labels = torch.randint(0, K, (shape[0],))
    for spec in (margin_spec(labels, K, torch.float64), torch.randn(2, K, dtype=torch.float64)):
        lazy = bounds(model, x, 0.05, spec=spec)
        (c_ref, r_ref), _ = blockwise_jacobian_ref(model, x, 0.05, "output", spec=spec)
        torch.testing.assert_close(lazy.center, c_ref)
        torch.testing.assert_close(lazy.radius, r_ref)


def test_lazy_float32_batch_sizes():
    model = models.mlp((30, 40, 23, 7))
    for N in (1, 2, 13, 97):
        x = torch.rand(N, 30)
        lazy = bounds(model, x, 0.05, chunk_size=8)
        full, _ = bounds(model, x, 0.05, return_layers=True, chunk_size=8)
        torch.testing.assert_close(lazy.lower, full.lower, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lazy.upper, full.upper, rtol=1e-5, atol=1e-5)
    empty = bounds(model, torch.rand(0, 30), 0.05)
    assert empty.lower.shape == (0, 7)


def test_decide_computes_only_undecided_rows():
    # the last column: z + radius == 0 exactly (powers of two), which is inactive (strict >)
    z = torch.tensor([[0.5, -0.2, -0.2, -1.0, 0.0, -0.5], [-0.1, 0.3, -0.4, -0.05, -3.0, -0.25]], dtype=torch.float64)
    exact = torch.tensor([[9.0, 0.1, 0.3, 0.5, 0.0, 0.5], [0.2, 9.0, 0.1, 0.0, 2.0, 0.5]], dtype=torch.float64)
    ub = exact * torch.tensor([[1.0, 3.0, 1.0, 1.5, 1.0, 2.0], [2.0, 1.0, 5.0, 1.0, 1.4, 1.0]], dtype=torch.float64)
    asked = []

    def exact_radius(idx):
        asked.append(idx.clone())
        return exact.gather(1, idx)

    ub_before = ub.clone()
    s = etb_tail._decide(z, ub, exact_radius)
    torch.testing.assert_close(s, (z + exact > 0).to(z.dtype))
    assert s[0, 5] == 0 and s[1, 5] == 1
    # undecided: z <= 0 and z + ub > 0 -> row 0: {1, 2, 5}; row 1: {0, 2, 5} (3: ub 0; 4: -3 + 2.8 < 0)
    (idx,) = asked
    assert idx.shape == (2, 3)
    assert sorted(idx[0].tolist()) == [1, 2, 5] and sorted(idx[1].tolist()) == [0, 2, 5]
    # ub is tightened to the exact radius where that was computed, unchanged elsewhere
    want = ub_before.clone()
    for b in range(2):
        for i in idx[b].tolist():
            want[b, i] = exact[b, i]
    torch.testing.assert_close(ub, want)


def test_decide_without_undecided_rows_asks_nothing():
    z = torch.tensor([[1.0, -2.0]])
    s = etb_tail._decide(z, torch.tensor([[5.0, 1.0]]), lambda idx: pytest.fail("no row is undecided"))
    assert s.tolist() == [[1.0, 0.0]]


@pytest.mark.parametrize("name,make,shape", CASES[:2])
def test_lazy_gradients_equal_full_forward(name, make, shape):
    model = make()
    x = torch.randn(shape, dtype=torch.float64)

    def grads(return_layers):
        model.zero_grad()
        xx = x.clone().requires_grad_(True)
        eps = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
        out = bounds(model, xx, eps, center_at="output", return_layers=return_layers)
        out = out[0] if return_layers else out
        w = torch.linspace(-1, 2, out.lower.numel(), dtype=torch.float64).reshape(out.lower.shape)
        ((out.lower * w).sum() + (out.upper * w.flip(0)).sum()).backward()
        return [xx.grad, eps.grad] + [p.grad.clone() for p in model.parameters()]

    for a, b in zip(grads(False), grads(True)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name,make,shape", CASES[:2])
def test_lazy_gradcheck(name, make, shape):
    model = make()
    lins = [m for m in model if isinstance(m, nn.Linear)][-2:]  # a hidden tail layer and the output layer
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    eps = torch.full(shape, 0.05, dtype=torch.float64, requires_grad=True)
    assert gradcheck_bounds(model, lins, x, eps, center_at="linear")


@pytest.mark.parametrize("N,n,R,h", [(1, 1, 1, 1), (3, 7, 10, 5), (2, 13, 1, 17)])
def test_radius_of_rows_matches_formula_and_gradcheck(N, n, R, h):
    # the hand-written backward of sum over directions |rows D^T| against the plain formula
    D = torch.randn(N, n, h, dtype=torch.float64, requires_grad=True)
    rows = torch.randn(N, R, h, dtype=torch.float64, requires_grad=True)
    r = torch.rand(N, n, dtype=torch.float64)
    got = etb_tail.radius_of_rows(D, rows, r)
    want = torch.einsum("nkh,nrh->nkr", D, rows).abs().sum(1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(got)
    gD, grows = torch.autograd.grad(got, (D, rows), g)
    wD, wrows = torch.autograd.grad(want, (D, rows), g, retain_graph=True)
    torch.testing.assert_close(gD, wD, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grows, wrows, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b: etb_tail.radius_of_rows(a, b, r), (D, rows))
    # one input without gradients: only the other's is formed
    (only,) = torch.autograd.grad(etb_tail.radius_of_rows(D.detach(), rows, r).sum(), rows)
    torch.testing.assert_close(only, torch.autograd.grad(want.sum(), rows)[0], rtol=1e-12, atol=1e-12)
