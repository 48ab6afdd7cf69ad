"""Whole-network ETB against independent references (float64)."""
import math
import pytest
import torch
from torch import nn

import etbkernels
from etbkernels.network import Normalize, bounds, margin_spec, models
from network_ref import blockwise_jacobian_ref, per_logit_autograd

torch.manual_seed(0)


def _bn_eval(bn):
    with torch.no_grad():
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return bn.eval()


def tiny_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         _bn_eval(nn.BatchNorm1d(16)), nn.Linear(16, 5)).double()


def tiny_cnn():
    return nn.Sequential(
        Normalize([0.4, 0.5], [0.3, 0.2]),
        nn.Conv2d(2, 4, 3, stride=1, padding=1), _bn_eval(nn.BatchNorm2d(4)), nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1), nn.ReLU(),
        nn.AvgPool2d(2), nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=2), nn.ReLU(),
        nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(6 * 2 * 2, 8)), nn.ReLU(), nn.Linear(8, 4),
    ).double().eval()


def patch_cnn():
    """Windows stay smaller than the 1x14x14 input through every conv: exercises the patches form
    (padding, stride 2, dilation 2, groups 2, BatchNorm, AvgPool)."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2), _bn_eval(nn.BatchNorm2d(6)), nn.ReLU(),
        nn.AvgPool2d(2, stride=1), nn.Conv2d(6, 4, 2, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 3),
    ).double().eval()


CASES = [("mlp", tiny_mlp, (3, 12)), ("cnn", tiny_cnn, (3, 2, 7, 7)), ("patch_cnn", patch_cnn, (2, 1, 14, 14))]


@pytest.mark.parametrize("name,make,shape", CASES)
@pytest.mark.parametrize("center_at", ["linear", "output"])
def test_mask_ibp_equals_per_logit_autograd(name, make, shape, center_at):
    model = make()
    x = torch.rand(shape, dtype=torch.float64)
    eps = 0.05
    c_ref, r_ref = per_logit_autograd(model, x, eps, center_at)
    b = bounds(model, x, eps, method="etb", mask="ibp", center_at=center_at)
    torch.testing.assert_close(b.center, c_ref)
    torch.testing.assert_close(b.radius, r_ref)
    # the forward (all-layer) path with the same masks agrees too
    b2, _ = bounds(model, x, eps, method="etb", mask="ibp", center_at=center_at, return_layers=True)
    torch.testing.assert_close(b2.radius, r_ref)
    torch.testing.assert_close(b2.center, c_ref)


@pytest.mark.parametrize("name,make,shape", CASES)
@pytest.mark.parametrize("center_at", ["linear", "output"])
def test_mask_etb_equals_blockwise_jacobians(name, make, shape, center_at):
    model = make()
    x = torch.rand(shape, dtype=torch.float64)
    eps = torch.rand(shape[1:], dtype=torch.float64) * 0.08  # per-feature radius
    (c_ref, r_ref), layers_ref = blockwise_jacobian_ref(model, x, eps, center_at)
    b, layers = bounds(model, x, eps, center_at=center_at, return_layers=True)
    torch.testing.assert_close(b.center, c_ref)
    torch.testing.assert_close(b.radius, r_ref)
    assert len(layers) == len(layers_ref)
    for got, (c, r) in zip(layers, layers_ref):
        torch.testing.assert_close(got.center.flatten(1), c)
        torch.testing.assert_close(got.radius.flatten(1), r)


@pytest.mark.parametrize("name,make,shape", CASES)
@pytest.mark.parametrize("mask", ["ibp", "etb"])
def test_margin_spec_folded(name, make, shape, mask):
    model = make()
    x = torch.rand(shape, dtype=torch.float64)
    K = model[-1].out_features
    y = torch.randint(0, K, (shape[0],))
    C = margin_spec(y, K, dtype=torch.float64)
    b = bounds(model, x, 0.05, mask=mask, spec=C)
    if mask == "ibp":
        c_ref, r_ref = per_logit_autograd(model, x, 0.05, "output", spec=C)
    else:
        (c_ref, r_ref), _ = blockwise_jacobian_ref(model, x, 0.05, "output", spec=C)
    torch.testing.assert_close(b.center, c_ref)
    torch.testing.assert_close(b.radius, r_ref)
    # folding is at least as tight as differencing the logit bounds
    lb = bounds(model, x, 0.05, mask=mask)
    diff_radius = torch.einsum("nkm,nm->nk", C.abs(), lb.radius)
    assert bool((b.radius <= diff_radius + 1e-12).all())
    # a shared (K, out) spec equals the per-sample one
    shared = bounds(model, x, 0.05, mask=mask, spec=C[0])
    one = bounds(model, x[:1], 0.05, mask=mask, spec=C[:1])
    torch.testing.assert_close(shared.radius[:1], one.radius)


def test_margin_spec_rows():
    y = torch.tensor([2, 0])
    C = margin_spec(y, 3)
    assert C.shape == (2, 2, 3)
    torch.testing.assert_close(C[0], torch.tensor([[-1.0, 0, 1], [0, -1, 1]]))
    torch.testing.assert_close(C[1], torch.tensor([[1.0, -1, 0], [1, 0, -1]]))
    with pytest.raises(ValueError, match="labels"):
        margin_spec(torch.tensor([3]), 3)


def test_given_masks_and_chunking_agree():
    model = tiny_cnn()
    x = torch.rand(5, 2, 7, 7, dtype=torch.float64)
    ref, layers = bounds(model, x, 0.03, return_layers=True)
    masks = [(l.upper > 0).double() for l in layers]
    given = bounds(model, x, 0.03, mask=masks)  # backward path with the ETB masks
    torch.testing.assert_close(given.radius, ref.radius)
    torch.testing.assert_close(given.center, ref.center)
    for mask in ("etb", "ibp"):
        whole = bounds(model, x, 0.03, mask=mask)
        chunked = bounds(model, x, 0.03, mask=mask, chunk_size=2)
        torch.testing.assert_close(chunked.radius, whole.radius)


def test_etb_tighter_than_ibp_and_center_choices_share_radius():
    # ETB is tighter than IBP on average, not for every output: a masked linearization can be
    # wider than IBP's interval for some logit, so only the mean is compared.
    torch.manual_seed(5)
    model = tiny_cnn()
    x = torch.rand(4, 2, 7, 7, dtype=torch.float64)
    ibp = bounds(model, x, 0.02, method="ibp")
    for mask in ("ibp", "etb"):
        lin = bounds(model, x, 0.02, mask=mask, center_at="linear")
        out = bounds(model, x, 0.02, mask=mask, center_at="output")
        assert lin.radius.mean() < ibp.radius.mean()
        if mask == "ibp":  # same masks, so the same radius
            torch.testing.assert_close(lin.radius, out.radius)
        torch.testing.assert_close(out.center, model(x))


def test_top_level_export():
    assert etbkernels.bounds is bounds
    assert etbkernels.margin_spec is margin_spec


def test_patches_form_equals_dense_directions(monkeypatch):
    from etbkernels.network import etb
    model = patch_cnn()
    x = torch.rand(3, 1, 14, 14, dtype=torch.float64)
    got, layers = bounds(model, x, 0.05, return_layers=True)
    monkeypatch.setattr(etb, "_use_patches", lambda net: False)
    ref, layers_ref = bounds(model, x, 0.05, return_layers=True)
    torch.testing.assert_close(got.radius, ref.radius)
    for a, b in zip(layers, layers_ref):
        torch.testing.assert_close(a.radius, b.radius)


@pytest.mark.parametrize("c0,pad,stride,batch", [(3, 1, 2, 2), (2, 0, 1, 1), (1, 2, 1, 3)])
def test_flatten_linear_from_patches_equals_dense(c0, pad, stride, batch):
    """Linear(Flatten(.)) applied to patches equals the dense directions times the weight, with
    several input channels, padding (windows that leave the image) and samples in one call."""
    from etbkernels.network import patches
    from etbkernels.network.layers import ConvOp

    g = torch.Generator().manual_seed(11)
    conv1 = ConvOp(torch.randn(4, c0, 3, 3, generator=g, dtype=torch.float64), None, (1, 1), (pad, pad), (1, 1), 1,
                   (c0, 9, 9))
    conv2 = ConvOp(torch.randn(5, 4, 3, 3, generator=g, dtype=torch.float64), None, (stride, stride), (pad, pad),
                   (1, 1), 1, conv1.out_shape)
    s = (torch.rand((batch,) + tuple(conv1.out_shape), generator=g) > 0.4).double()
    r = torch.rand(batch, c0, 9, 9, generator=g, dtype=torch.float64)
    P = patches.apply(patches.mask(patches.apply(patches.identity((c0, 9, 9), torch.float64, "cpu"), conv1), s),
                      conv2)
    weight = torch.randn(7, math.prod(conv2.out_shape), generator=g, dtype=torch.float64)
    got = patches.flatten_linear_directions(P, weight, r)
    dense = patches.to_directions(P, r)  # (N, n, C, H, W)
    want = dense.flatten(2) @ weight.T
    assert got.shape == (batch, c0 * 81, 7)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("make,shape", [(tiny_cnn, (2, 7, 7)), (lambda: models.mlp((12, 9, 7, 4)),
                                                                  (3, 2, 2))])
def test_no_grad_inplace_masks_equal_graph_path(make, shape, chunk):
    """Under no_grad the masks are applied in place, forward and backward; the result must equal
    the out-of-place path (taken when a graph is recorded), over several chunks that share the
    first-stage patches."""
    torch.manual_seed(3)
    model = make().double()
    x = torch.rand((7,) + shape, dtype=torch.float64)
    for mask in ("etb", "ibp"):
        with torch.no_grad():
            fast, fast_layers = bounds(model, x, 0.05, mask=mask, return_layers=True, chunk_size=chunk)
        ref, ref_layers = bounds(model, x, 0.05, mask=mask, return_layers=True, chunk_size=chunk)
        assert ref.radius.requires_grad  # the graph path really ran
        torch.testing.assert_close(fast.radius, ref.radius.detach())
        for a, b in zip(fast_layers, ref_layers):
            torch.testing.assert_close(a.radius, b.radius.detach())
        # output rows only: mask="ibp" pulls them backward (etb._pull_back), masks in place too
        with torch.no_grad():
            fast = bounds(model, x, 0.05, mask=mask, chunk_size=chunk)
        ref = bounds(model, x, 0.05, mask=mask, chunk_size=chunk)
        assert ref.radius.requires_grad
        torch.testing.assert_close(fast.radius, ref.radius.detach())


def test_no_grad_inplace_masks_leave_the_callers_spec_alone():
    """A net whose last stage is only a Flatten (trailing ReLU) starts the pull-back with a view of
    the caller's spec: the in-place masks must not write into it."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten()).double()
    x = torch.rand(4, 2, 6, 6, dtype=torch.float64)
    spec = torch.randn(4, 5, 48, dtype=torch.float64)
    keep = spec.clone()
    with torch.no_grad():
        fast = bounds(model, x, 0.05, mask="ibp", spec=spec)
    torch.testing.assert_close(spec, keep, rtol=0, atol=0)
    ref = bounds(model, x, 0.05, mask="ibp", spec=spec)
    torch.testing.assert_close(fast.radius, ref.radius.detach())


def test_patch_conv_taps_are_single_mms_for_frozen_weights():
    """A strided slice of the patches times a weight tap must run as one mm whether or not the
    weight requires grad: ``x @ w.T`` runs a bmm of tiny per-row products for a frozen weight
    (a frozen model's mask="etb" bounds were 16-19x slower: bench_network.py --frozen). Same bounds."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from etbkernels.network import patches

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(func._overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(6)
    P = torch.randn(2, 5, 5, 1, 3, 3, 4)
    w = torch.randn(6, 4, 3, 3)[:, :, 1, 1]  # a tap: a strided (C_out, C_in) view, no grad
    with torch.no_grad(), Ops() as rec:
        y = patches.tap_matmul(P[:, 1::2, 1::2], w, 1)
        g = patches.tap_matmul(y, w, 1, transpose=True)
    assert "bmm" not in rec.seen and rec.seen.count("mm") == 2
    torch.testing.assert_close(y, torch.einsum("bhwzuvc,oc->bhwzuvo", P[:, 1::2, 1::2], w))
    torch.testing.assert_close(g, torch.einsum("bhwzuvo,oc->bhwzuvc", y, w))

    model = tiny_cnn()
    x = torch.rand(3, 2, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        live = bounds(model, x, 0.03)
        model.requires_grad_(False)
        frozen = bounds(model, x, 0.03)
    torch.testing.assert_close(frozen.radius, live.radius)
