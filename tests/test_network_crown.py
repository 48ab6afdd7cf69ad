"""The sound CROWN methods, ``bounds(..., method="crown-ibp")`` and ``method="crown-forward"``: equal
dense per-sample references, are sound on sampled points and against PGD, are exact on affine
nets, and their ReLU relaxation holds."""
import pytest
import torch
from torch import nn

from etbkernels.attacks import pgd_output_range
from etbkernels.network import bounds, margin_spec, models
from etbkernels.network.api import _crown_ibp
from etbkernels.network.crown_ibp import crown_backward, relu_relaxation
from etbkernels.network.parse import parse_model
from network_ref import crown_forward_ref, crown_ibp_ref, modules
from test_network_reference import CASES

torch.manual_seed(7)


def dense_reference_case(make, shape, spec_kind):
    """(model, x, eps, spec) for a comparison with a dense reference: float64 inputs in [0, 1), a
    different radius per input, and no spec, a shared (3, out) one or margins."""
    model = make()
    x = torch.rand(shape, dtype=torch.float64)
    eps = torch.rand(shape[1:], dtype=torch.float64) * 0.08
    out = model(x).shape[1]
    spec = None if spec_kind is None else torch.randn(3, out, dtype=torch.float64) if spec_kind == "shared" \
        else margin_spec(torch.randint(0, out, (shape[0],)), out, dtype=torch.float64)
    return model, x, eps, spec


@pytest.mark.parametrize("name,make,shape", CASES)
@pytest.mark.parametrize("spec_kind", [None, "shared", "margin"])
def test_equals_dense_reference(name, make, shape, spec_kind):
    model, x, eps, spec = dense_reference_case(make, shape, spec_kind)
    lo_ref, up_ref = crown_ibp_ref(model, x, eps, spec)
    b = bounds(model, x, eps, method="crown-ibp", spec=spec)
    torch.testing.assert_close(b.lower, lo_ref)
    torch.testing.assert_close(b.upper, up_ref)
    # the reference has unstable ReLUs to relax, or this test would not test the relaxation
    b_ibp, layers = bounds(model, x, eps, method="ibp", return_layers=True)
    assert any(bool(((l.lower < 0) & (l.upper > 0)).any()) for l in layers)


@pytest.mark.parametrize("name,make,shape", CASES)
@pytest.mark.parametrize("spec_kind", [None, "shared", "margin"])
def test_forward_mode_equals_dense_reference(name, make, shape, spec_kind):
    """Every layer equals the forward reference; the output is the tighter of it and the backward
    reference run on those hidden bounds."""
    model, x, eps, spec = dense_reference_case(make, shape, spec_kind)
    ref = crown_forward_ref(model, x, eps, spec)
    b, layers = bounds(model, x, eps, method="crown-forward", spec=spec, return_layers=True)
    assert len(layers) == len(ref) - 1
    for got, (lo, up) in zip(layers, ref[:-1]):
        torch.testing.assert_close(got.lower.flatten(1), lo)
        torch.testing.assert_close(got.upper.flatten(1), up)
    back_lo, back_up = crown_ibp_ref(model, x, eps, spec, pre=ref[:-1])
    torch.testing.assert_close(b.lower, torch.maximum(ref[-1][0], back_lo))
    torch.testing.assert_close(b.upper, torch.minimum(ref[-1][1], back_up))
    # tighter than IBP's hidden bounds on average from the second ReLU on (the first are equal)
    _, ibp_layers = bounds(model, x, eps, method="ibp", return_layers=True)
    torch.testing.assert_close(layers[0].upper, ibp_layers[0].upper)
    assert all(float(a.width.mean().detach()) < float(c.width.mean().detach())
               for a, c in zip(layers[1:], ibp_layers[1:]))


@pytest.mark.parametrize("method", ["crown-forward", "crown"])
@pytest.mark.parametrize("seed", range(2))
def test_sound_at_every_layer(seed, method):
    """The two methods with their own hidden intervals: each ReLU's input lies in its bounds."""
    torch.manual_seed(seed)
    model = CASES[2][1]()  # patches form (forward mode) / windows (full CROWN) through every conv
    x = torch.rand(2, 1, 14, 14, dtype=torch.float64)
    eps = 0.08
    with torch.no_grad():
        b, layers = bounds(model, x, eps, method=method, return_layers=True)
        u = torch.rand((300,) + x.shape, dtype=torch.float64) * 2 - 1
        u[:150] = u[:150].sign()
        z, k = (x + eps * u).reshape((-1,) + x.shape[1:]), 0
        for m in modules(model):  # each ReLU's input lies in its bounds
            if isinstance(m, nn.ReLU):
                zz = z.reshape((300,) + layers[k].lower.shape)
                assert bool((zz >= layers[k].lower - 1e-12).all()) and bool((zz <= layers[k].upper + 1e-12).all())
                k += 1
            z = m(z)
        assert k == len(layers)
        y = z.reshape(300, 2, -1)
        assert bool((y >= b.lower - 1e-12).all()) and bool((y <= b.upper + 1e-12).all())
    found_lo, found_hi = pgd_output_range(model, x - eps, x + eps, steps=40, restarts=2, seed=seed)
    assert bool((found_lo >= b.lower - 1e-12).all()) and bool((found_hi <= b.upper + 1e-12).all())


@pytest.mark.parametrize("method", ["crown-ibp", "crown-forward"])
def test_chunk_sizes_agree(method):
    model = CASES[1][1]()
    x = torch.rand(5, 2, 7, 7, dtype=torch.float64)
    C = margin_spec(torch.tensor([0, 1, 2, 3, 0]), 4, dtype=torch.float64)
    whole = bounds(model, x, 0.05, method=method, spec=C)
    part = bounds(model, x, 0.05, method=method, spec=C, chunk_size=2)
    torch.testing.assert_close(part.lower, whole.lower, rtol=0, atol=1e-13)
    torch.testing.assert_close(part.upper, whole.upper, rtol=0, atol=1e-13)


@pytest.mark.parametrize("chunk,images", [(1, 512), (2, 1), (None, 3)])
def test_chunks_and_row_groups_agree(chunk, images):
    model = CASES[1][1]()
    x = torch.rand(5, 2, 7, 7, dtype=torch.float64)
    whole = bounds(model, x, 0.05, method="crown-ibp")
    if images == 512:
        part = bounds(model, x, 0.05, method="crown-ibp", chunk_size=chunk)
    else:  # row groups of a few images per transposed convolution
        net = parse_model(model, (2, 7, 7), x)
        pre = [(b.lower, b.upper) for b in bounds(model, x, 0.05, method="ibp", return_layers=True)[1]]
        lo, up = crown_backward(net, x, torch.full_like(x, 0.05), pre, images_per_call=images)
        part = type(whole)(lo, up)
    torch.testing.assert_close(part.lower, whole.lower, rtol=0, atol=1e-13)
    torch.testing.assert_close(part.upper, whole.upper, rtol=0, atol=1e-13)


@pytest.mark.parametrize("seed", range(3))
def test_sound_on_samples_vertices_and_pgd(seed):
    torch.manual_seed(seed)
    model = CASES[1][1]()
    x = torch.rand(3, 2, 7, 7, dtype=torch.float64)
    eps = 0.1
    with torch.no_grad():
        b = bounds(model, x, eps, method="crown-ibp")
    u = torch.rand((400,) + x.shape, dtype=torch.float64) * 2 - 1
    u[:200] = u[:200].sign()  # vertices
    y = model((x + eps * u).reshape((-1,) + x.shape[1:])).reshape(400, 3, -1)
    assert bool((y >= b.lower - 1e-12).all()) and bool((y <= b.upper + 1e-12).all())
    found_lo, found_hi = pgd_output_range(model, x - eps, x + eps, steps=40, restarts=2, seed=seed)
    assert bool((found_lo >= b.lower - 1e-12).all()) and bool((found_hi <= b.upper + 1e-12).all())


def test_tighter_than_ibp_on_the_zoo():
    """On random-init CNNs IBP's width grows with depth much faster than CROWN-IBP's, CROWN's
    forward mode tightens the hidden layers too, and full CROWN's own hidden intervals more (on
    average; not guaranteed per output)."""
    torch.manual_seed(0)
    model = models.small_cnn().double()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        ibp = bounds(model, x, 0.01, method="ibp")
        crown = bounds(model, x, 0.01, method="crown-ibp")
        fwd = bounds(model, x, 0.01, method="crown-forward")
        full = bounds(model, x, 0.01, method="crown")
    assert float(crown.width.mean()) < 0.5 * float(ibp.width.mean())
    assert float(fwd.width.mean()) < 0.5 * float(crown.width.mean())
    assert float(full.width.mean()) < 0.9 * float(fwd.width.mean())


@pytest.mark.parametrize("method", ["crown-ibp", "crown-forward", "crown"])
def test_exact_on_an_affine_net(method):
    """No ReLU: the bound is the exact range of the affine map, lam mu +- |lam| r (the forward
    mode reaches it through the backward pass at the output)."""
    model = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 3)).double()
    x, eps = torch.randn(5, 6, dtype=torch.float64), 0.3
    W = model[1].weight @ model[0].weight
    b = bounds(model, x, eps, method=method)
    c, r = model(x), eps * W.abs().sum(1)
    torch.testing.assert_close(b.lower, c - r)
    torch.testing.assert_close(b.upper, c + r)


def test_relu_relaxation_holds_and_touches_the_ends():
    g = torch.Generator().manual_seed(3)
    l = torch.randn(2000, generator=g, dtype=torch.float64)
    u = l + torch.rand(2000, generator=g, dtype=torch.float64) * 3
    a_l, a_u, c_u = relu_relaxation(l, u)
    t = torch.rand(50, 1, generator=g, dtype=torch.float64)
    z = l + t * (u - l)  # points of each interval, ends included below
    for zz in (z, l[None], u[None]):
        assert bool((a_l * zz <= torch.relu(zz) + 1e-15).all())
        assert bool((torch.relu(zz) <= a_u * zz + c_u + 1e-12).all())
    unstable = (l < 0) & (u > 0)
    assert unstable.any() and (~unstable).any()
    # the upper line is the chord: it meets relu at both ends of an unstable interval
    torch.testing.assert_close((a_u * l + c_u)[unstable], torch.zeros_like(l[unstable]))
    torch.testing.assert_close((a_u * u + c_u)[unstable], u[unstable])
    # CROWN's lower slope: 1 where the interval leans positive, else 0
    assert bool((a_l[unstable] == (u >= -l)[unstable].double()).all())


def test_return_layers_are_ibps_and_edge_cases():
    model = CASES[0][1]()
    x = torch.rand(3, 12, dtype=torch.float64)
    out, layers = bounds(model, x, 0.05, method="crown-ibp", return_layers=True)
    _, ibp_layers = bounds(model, x, 0.05, method="ibp", return_layers=True)
    for a, b in zip(layers, ibp_layers):
        torch.testing.assert_close(a.lower, b.lower)
        torch.testing.assert_close(a.upper, b.upper)
    assert out.lower.shape == (3, 5)
    empty = bounds(model, x[:0], 0.05, method="crown-ibp")
    assert empty.lower.shape == (0, 5)
    no_rows = bounds(model, x, 0.05, method="crown-ibp", spec=torch.zeros(0, 5, dtype=torch.float64))
    assert no_rows.lower.shape == (3, 0)
    out_f, layers_f = bounds(model, x, 0.05, method="crown-forward", return_layers=True)
    assert out_f.lower.shape == (3, 5) and [b.lower.shape for b in layers_f] == [b.lower.shape for b in layers]
    assert bounds(model, x[:0], 0.05, method="crown-forward").lower.shape == (0, 5)
    for method in ("crown-ibp", "crown-forward"):
        with pytest.raises(ValueError, match="apply to method='etb' only"):
            bounds(model, x, 0.05, method=method, mask="ibp")
    with pytest.raises(ValueError, match="method must be one of"):
        bounds(model, x, 0.05, method="crown-backward")


def test_memory_chunk_rule_counts_both_row_sets(monkeypatch):
    """The default chunk keeps 2K rows x the widest layer near DEFAULT_CHUNK_BYTES."""
    from etbkernels.network import chunking
    model = CASES[1][1]()
    x = torch.rand(6, 2, 7, 7, dtype=torch.float64)
    seen = []
    real = chunking.chunked
    monkeypatch.setattr(chunking, "chunked", lambda fn, N, chunk, *t: seen.append(chunk) or real(fn, N, chunk, *t))
    # widest layer: 4 x 7 x 7 = 196; 4 outputs -> 8 rows; 3 x 8 x 196 x 8 bytes = 37632 bytes per sample
    monkeypatch.setattr(chunking, "DEFAULT_CHUNK_BYTES", 2 * 37632)
    net = parse_model(model, (2, 7, 7), x)
    _crown_ibp(net, x, torch.full_like(x, 0.05), None, None)
    assert seen == [2]


@pytest.mark.parametrize("method", ["crown-ibp", "crown-forward", "crown"])
@pytest.mark.parametrize("case", [0, 1, 2])
def test_no_grad_equals_the_graph_path(method, case):
    """Without a graph CROWN-IBP relaxes the rows in place; the values must not change."""
    _, make, shape = CASES[case]
    model = make()
    x = torch.rand(shape, dtype=torch.float64)
    spec = margin_spec(torch.zeros(shape[0], dtype=torch.long), model(x).shape[1], dtype=torch.float64)
    with_graph = bounds(model, x, 0.05, method=method, spec=spec)
    assert with_graph.lower.requires_grad
    with torch.no_grad():
        without = bounds(model, x, 0.05, method=method, spec=spec)
    torch.testing.assert_close(without.lower, with_graph.lower, rtol=0, atol=1e-13)
    torch.testing.assert_close(without.upper, with_graph.upper, rtol=0, atol=1e-13)


def test_forward_mode_ibp_track_tightens(monkeypatch):
    """The IBP run alongside CROWN's forward mode narrows its intervals (here from the second ReLU
    on) and never widens them."""
    import etbkernels.network.crown_forward as cf
    model = CASES[1][1]()
    x = torch.rand(3, 2, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        out, layers = bounds(model, x, 0.3, method="crown-forward", return_layers=True)
        monkeypatch.setattr(cf, "intersect", lambda lower, upper, lower2, upper2: (lower, upper))
        out_alone, layers_alone = bounds(model, x, 0.3, method="crown-forward", return_layers=True)
    for a, b in zip(layers + [out], layers_alone + [out_alone]):
        assert bool((a.lower >= b.lower - 1e-12).all()) and bool((a.upper <= b.upper + 1e-12).all())
    assert all(float((b.width - a.width).max()) > 1e-3 for a, b in zip(layers[1:] + [out], layers_alone[1:] + [out_alone]))


def test_forward_mode_flatten_linear_from_patches(monkeypatch):
    """A CNN whose windows stay smaller than the input up to Flatten + Linear, which the forward
    mode then takes straight from patches: equal to the dense reference and to the dense path."""
    import etbkernels.network.crown_forward as cf
    from etbkernels.network import etb
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2), nn.ReLU(), nn.Conv2d(3, 4, 2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(36, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    x = torch.rand(2, 1, 10, 10, dtype=torch.float64)
    calls = []
    real = cf._Directions.flatten_linear
    monkeypatch.setattr(cf._Directions, "flatten_linear", lambda self, *a: calls.append(1) or real(self, *a))
    b, layers = bounds(model, x, 0.1, method="crown-forward", return_layers=True)
    assert calls, "the fused Flatten + Linear path was not taken"
    ref = crown_forward_ref(model, x, 0.1)
    for got, (lo, up) in zip(layers, ref[:-1]):
        torch.testing.assert_close(got.lower.flatten(1), lo)
        torch.testing.assert_close(got.upper.flatten(1), up)
    monkeypatch.setattr(etb, "_use_patches", lambda net: False)
    dense, dense_layers = bounds(model, x, 0.1, method="crown-forward", return_layers=True)
    for a, c in zip(layers + [b], dense_layers + [dense]):
        torch.testing.assert_close(a.lower, c.lower)
        torch.testing.assert_close(a.upper, c.upper)


@pytest.mark.parametrize("method", ["crown-ibp", "crown-forward", "crown"])
@pytest.mark.parametrize("layers,shape", [
    ([nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten()], (3, 1, 5, 5)),          # ends with ReLU, Flatten
    ([nn.Flatten(), nn.Linear(9, 4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)], (3, 1, 3, 3)),  # a Flatten-only stage
    ([nn.ReLU(), nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8, 3)], (3, 1, 6, 6)),
])
def test_edge_layouts_are_sound(method, layers, shape):
    torch.manual_seed(1)
    model = nn.Sequential(*layers).double()
    x = torch.rand(shape, dtype=torch.float64) - 0.3
    with torch.no_grad():
        b = bounds(model, x, 0.2, method=method)
        u = torch.rand((500,) + shape, dtype=torch.float64) * 2 - 1
        u[:250] = u[:250].sign()
        y = model((x + 0.2 * u).reshape((-1,) + shape[1:])).reshape(500, shape[0], -1)
    assert bool((y >= b.lower - 1e-12).all()) and bool((y <= b.upper + 1e-12).all())
    if method != "crown-ibp":  # IBP runs alongside: never wider than IBP
        assert bool((b.width <= bounds(model, x, 0.2, method="ibp").width + 1e-12).all())
