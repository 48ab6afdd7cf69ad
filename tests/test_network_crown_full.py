"""Full CROWN, ``bounds(..., method="crown")``: every layer equals a dense per-sample reference,
rows on windows equal dense rows, and it is differentiable (soundness at every layer and
tightness against the other methods: tests/test_network_crown.py)."""
import pytest
import torch
from torch import nn

from etbkernels.network import BoundsOptions, bounds, margin_spec
from etbkernels.network import crown_full
from etbkernels.network.parse import parse_model
from network_ref import crown_full_ref, modules
from test_network_crown import dense_reference_case
from test_network_grad import gradcheck_bounds
from test_network_reference import CASES

torch.manual_seed(11)


@pytest.mark.parametrize("name,make,shape", CASES)
@pytest.mark.parametrize("spec_kind", [None, "shared", "margin"])
def test_every_layer_equals_dense_reference(name, make, shape, spec_kind):
    model, x, eps, spec = dense_reference_case(make, shape, spec_kind)
    ref = crown_full_ref(model, x, eps, spec)
    b, layers = bounds(model, x, eps, method="crown", spec=spec, return_layers=True)
    assert len(layers) == len(ref) - 1
    for got, (lo, up) in zip(layers + [b], ref):
        torch.testing.assert_close(got.lower.flatten(1), lo)
        torch.testing.assert_close(got.upper.flatten(1), up)
    # CROWN's own intervals differ from IBP's from the second ReLU on, or this tests nothing new
    _, ibp_layers = bounds(model, x, eps, method="ibp", return_layers=True)
    assert all(float((c.width - a.width).detach().max()) > 1e-6 for a, c in zip(layers[1:], ibp_layers[1:]))


def test_first_stage_conv_then_avgpool_is_exact():
    """Stage 0 with two ops that mix neurons: IBP op by op is looser; CROWN pulls the rows back
    through both and gets the exact range ``W mu + b +- |W| r`` of their product."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AvgPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)).double()
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64)
    assert not crown_full.ibp_is_exact(parse_model(model, (1, 6, 6), x).stages[0])
    _, layers = bounds(model, x, 0.1, method="crown", return_layers=True)
    _, ibp_layers = bounds(model, x, 0.1, method="ibp", return_layers=True)
    cut = nn.Sequential(*modules(model)[:2])
    eye = torch.eye(36, dtype=torch.float64).reshape(36, 1, 6, 6)
    W = (cut(eye) - cut(torch.zeros(1, 1, 6, 6, dtype=torch.float64))).flatten(1).T  # (8, 36)
    c, r = cut(x).flatten(1), 0.1 * W.abs().sum(1)
    torch.testing.assert_close(layers[0].lower.flatten(1), c - r)
    torch.testing.assert_close(layers[0].upper.flatten(1), c + r)
    assert float((ibp_layers[0].width - layers[0].width).detach().max()) > 1e-3


@pytest.mark.parametrize("images", [1, 7, None])
def test_row_groups_and_chunks_agree(images, monkeypatch):
    model = CASES[1][1]()
    x = torch.rand(5, 2, 7, 7, dtype=torch.float64)
    C = margin_spec(torch.tensor([0, 1, 2, 3, 0]), 4, dtype=torch.float64)
    whole, layers = bounds(model, x, 0.05, method="crown", spec=C, return_layers=True)
    real = crown_full.crown_layers
    if images is not None:  # a few images per transposed convolution: many row groups
        monkeypatch.setattr(crown_full, "BACKWARD_IMAGES", images)
    part, part_layers = bounds(model, x, 0.05, method="crown", spec=C, return_layers=True,
                               chunk_size=2 if images is None else None)
    assert crown_full.crown_layers is real
    for a, c in zip(part_layers + [part], layers + [whole]):
        torch.testing.assert_close(a.lower, c.lower, rtol=0, atol=1e-13)
        torch.testing.assert_close(a.upper, c.upper, rtol=0, atol=1e-13)


def test_default_chunk_with_gradients(monkeypatch):
    """With a graph, the default chunk comes from the graph's size: a small byte budget makes it
    2 samples for a batch of 5. Bounds and input gradients equal one whole-batch chunk's."""
    from etbkernels.network import chunking

    model = CASES[1][1]()
    x0 = torch.rand(5, 2, 7, 7, dtype=torch.float64)
    per_sample = crown_full.graph_numel_per_sample(parse_model(model, (2, 7, 7), x0)) * 8
    monkeypatch.setattr(chunking, "DEFAULT_CHUNK_BYTES", 2 * per_sample)
    calls = []
    real = chunking.chunked
    monkeypatch.setattr(chunking, "chunked", lambda run, N, chunk, *a: calls.append(chunk) or real(run, N, chunk, *a))

    def grads(chunk_size):
        x = x0.clone().requires_grad_()
        b = bounds(model, x, 0.05, method="crown", chunk_size=chunk_size)
        (b.upper - b.lower).sum().backward()
        return b, x.grad

    (got, g_got), (want, g_want) = grads(None), grads(5)
    assert calls == [2, 5]
    torch.testing.assert_close(got.lower, want.lower, rtol=0, atol=1e-13)
    torch.testing.assert_close(got.upper, want.upper, rtol=0, atol=1e-13)
    torch.testing.assert_close(g_got, g_want, rtol=1e-12, atol=1e-13)
    assert g_got.abs().sum() > 0


def test_neuron_groups_cover_each_neuron_once():
    """The dense-net group rule, with a budget of a few rows: each neuron's bound is computed once
    and in its place (a group that skipped or repeated a neuron would misplace the rest)."""
    model = CASES[0][1]()
    x = torch.rand(3, 12, dtype=torch.float64)
    net = parse_model(model, (12,), x)
    ref = crown_full_ref(model, x, 0.05)
    for numel in (1, 3 * 2 * 3 * 12, 1 << 24):
        crown_full.DENSE_GROUP_NUMEL, old = numel, crown_full.DENSE_GROUP_NUMEL
        try:
            g = crown_full.neuron_group(net, 3, 1)
            layers = crown_full.crown_layers(net, x, torch.full_like(x, 0.05))
        finally:
            crown_full.DENSE_GROUP_NUMEL = old
        assert g == max(1, min(net.stages[1][-1].out_shape[0], numel // (2 * 3 * 16)))
        for (lo, up), (rl, ru) in zip(layers, ref):
            torch.testing.assert_close(lo.flatten(1), rl)
            torch.testing.assert_close(up.flatten(1), ru)


def test_gradcheck_in_x_eps_and_weights():
    """Differentiable end to end, through every layer's CROWN interval (the relaxation's slopes
    and offsets depend on them); away from the relaxation's kinks the map is smooth."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3), nn.ReLU(),
                          nn.Linear(3, 2)).double()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    eps = torch.full((2, 1, 4, 4), 0.3, dtype=torch.float64, requires_grad=True)
    assert gradcheck_bounds(model, [model[0], model[3]], x, eps, method="crown")  # the first layer, a hidden one
    # the hidden interval really is CROWN's own (else this checks CROWN-IBP's gradients again),
    # and both ReLUs have unstable neurons, whose relaxation carries the intervals' gradients on
    with torch.no_grad():
        _, layers = bounds(model, x, eps, method="crown", return_layers=True)
        _, ibp_layers = bounds(model, x, eps, method="ibp", return_layers=True)
    assert float((ibp_layers[1].width - layers[1].width).max()) > 1e-3
    assert all(bool(((b.lower < 0) & (b.upper > 0)).any()) for b in layers)


def test_empty_batch_no_rows_and_an_affine_net():
    model = CASES[0][1]()
    x = torch.rand(3, 12, dtype=torch.float64)
    assert bounds(model, x[:0], 0.05, method="crown").lower.shape == (0, 5)
    assert bounds(model, x, 0.05, method="crown", spec=torch.zeros(0, 5, dtype=torch.float64)).lower.shape == (3, 0)
    with pytest.raises(ValueError, match="apply to method='etb' only"):
        bounds(model, x, 0.05, method="crown", mask="ibp")
    affine = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 3)).double()
    xa = torch.randn(5, 6, dtype=torch.float64)
    W = affine[1].weight @ affine[0].weight
    b = bounds(affine, xa, 0.3, method="crown")
    torch.testing.assert_close(b.lower, affine(xa) - 0.3 * W.abs().sum(1))
    torch.testing.assert_close(b.upper, affine(xa) + 0.3 * W.abs().sum(1))


@pytest.mark.parametrize("layers,shape", [
    # stride, padding (windows cut at the border), dilation, groups, AvgPool, BatchNorm, a Normalize-like scale
    ([nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=2, dilation=2,
      groups=2), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(4, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(6, 2)], (2, 2, 11, 9)),
    # a 1x1 conv with padding 2: its border neurons see only padding (their rows end at once)
    ([nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 3, 1, padding=2), nn.ReLU(), nn.Conv2d(3, 2, 3, stride=3), nn.ReLU(),
      nn.Flatten(), nn.Linear(18, 3)], (3, 1, 7, 8)),
])
@pytest.mark.parametrize("budget", [64, 2000, 10000, None])
def test_windows_equal_dense_rows(layers, shape, budget, monkeypatch):
    """Rows on windows equal dense rows: one position and channel per call (64), blocks of a few
    positions (10000: several blocks per stage), in between (2000), everything at once (default)."""
    torch.manual_seed(3)
    model = nn.Sequential(*layers).double().eval()
    for m in model:
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
    x = torch.rand(shape, dtype=torch.float64)
    cw = crown_full.crown_windows
    calls, shapes = [], []
    real, real_ub = cw.crown_neurons_windowed, cw.upper_bounds_windows
    monkeypatch.setattr(cw, "crown_neurons_windowed", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(cw, "upper_bounds_windows",
                        lambda net, lam, *a: shapes.append((lam.shape[1], lam.shape[2], lam.shape[-1])) or
                        real_ub(net, lam, *a))
    if budget is not None:
        monkeypatch.setattr(cw, "WINDOW_CALL_NUMEL", budget)
    b, layers_w = bounds(model, x, 0.1, method="crown", return_layers=True)
    assert len(calls) == 2  # both hidden conv stages went through windows
    if budget == 64:
        assert all(pb == 1 and rows == 2 for pb, rows, _ in shapes)
    elif budget == 10000:  # blocks of several positions, all channels, several blocks per stage
        assert any(pb > 1 for pb, _, _ in shapes) and len(shapes) > 2 and all(rows == 2 * C for _, rows, C in shapes)
    d, layers_d = bounds(model, x, 0.1, method="crown", return_layers=True, options=BoundsOptions(conv_windows=False))
    for a, c in zip(layers_w + [b], layers_d + [d]):
        torch.testing.assert_close(a.lower, c.lower, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a.upper, c.upper, rtol=1e-12, atol=1e-12)
    ref = crown_full_ref(model, x, 0.1)
    for a, (lo, up) in zip(layers_w + [b], ref):
        torch.testing.assert_close(a.lower.flatten(1), lo)
        torch.testing.assert_close(a.upper.flatten(1), up)
