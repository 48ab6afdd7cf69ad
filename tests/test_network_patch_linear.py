"""Flatten + Linear straight from patches (etbkernels/network/patch_linear.py) against the dense
directions and the earlier product-and-scatter formula, on awkward sizes, with gradients."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from etbkernels.network import patches
from etbkernels.network.layers import ConvOp


def _old_formula(P, weight, S, pad, r):
    """The previous implementation: the (positions x window x out) product, then index_add on the canvas
    (on the previous layout of the patches, (N, H, W, C0, Rh, Rw, C))."""
    N = r.shape[0]
    P = P.permute(3, 4, 5, 2, 0, 1, 6)
    P = P.expand((N,) + P.shape[1:])
    _, H, W, C0, Rh, Rw, C = P.shape
    out_f = weight.shape[0]
    H0, W0 = r.shape[2:]
    w = weight.reshape(out_f, C, H * W).permute(2, 1, 0)
    A = P.permute(1, 2, 4, 5, 0, 3, 6).reshape(H * W, Rh * Rw * N * C0, C)
    Y = torch.bmm(A, w).reshape(H * W * Rh * Rw, N * C0, out_f)
    Yc, Xc = max((H - 1) * S[0] + Rh, pad[0] + H0), max((W - 1) * S[1] + Rw, pad[1] + W0)
    h, w_, u, v = torch.meshgrid(*(torch.arange(k) for k in (H, W, Rh, Rw)), indexing="ij")
    index = ((h * S[0] + u) * Xc + (w_ * S[1] + v)).flatten()
    canvas = P.new_zeros(Yc * Xc, N * C0, out_f).index_add(0, index, Y)
    J = canvas.reshape(Yc, Xc, N, C0, out_f)[pad[0]: pad[0] + H0, pad[1]: pad[1] + W0].permute(2, 3, 0, 1, 4)
    return (J * r[..., None]).reshape(N, C0 * H0 * W0, out_f)


def _case(batch, c0, hw, convs, out_f, dtype, seed=0, grad=False):
    """Patches after ``convs`` ((out channels, kernel, stride, padding, dilation) each, masked between), a
    Linear weight and a radius."""
    g = torch.Generator().manual_seed(seed)
    shape = (c0,) + hw
    weights, ops = [], []
    for co, k, s, p, d in convs:
        wt = torch.randn(co, shape[0], k, k, generator=g, dtype=dtype).requires_grad_(grad)
        ops.append(ConvOp(wt, None, (s, s), (p, p), (d, d), 1, shape))
        weights.append(wt)
        shape = ops[-1].out_shape
    masks = [(torch.rand((batch,) + tuple(op.out_shape), generator=g) > 0.3).to(dtype) for op in ops[:-1]]
    lin = torch.randn(out_f, math.prod(shape), generator=g, dtype=dtype).requires_grad_(grad)
    r = torch.rand((batch, c0) + hw, generator=g, dtype=dtype).requires_grad_(grad)

    def patch(*ws):
        P = patches.identity((c0,) + hw, dtype, "cpu")
        for i, (op, wt) in enumerate(zip(ops, ws)):
            P = patches.apply(P, ConvOp(wt, None, op.stride, op.padding, op.dilation, 1, op.in_shape))
            if i < len(masks):
                P = patches.mask(P, masks[i])
        return P

    return patch, weights, lin, r


CASES = [  # batch, input channels, input size, convs
    (1, 1, (7, 7), [(3, 3, 1, 0, 1)]),                      # one conv: the patches still have batch 1
    (2, 1, (11, 9), [(5, 3, 2, 1, 1), (7, 2, 1, 0, 1)]),    # prime channels, padding, non-square input
    (3, 2, (13, 13), [(3, 4, 2, 0, 1), (5, 3, 2, 1, 1)]),   # stride 2 twice: windows of stride 4
    (5, 3, (12, 10), [(2, 3, 1, 2, 2), (3, 2, 3, 0, 1)]),   # dilation, padding past the kernel, stride 3
    (4, 1, (28, 28), [(16, 4, 2, 0, 1), (32, 4, 1, 0, 1)]),  # the small CNN's shapes
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch,c0,hw,convs", CASES)
def test_equals_dense_directions_and_old_formula(batch, c0, hw, convs, dtype):
    patch, weights, lin, r = _case(batch, c0, hw, convs, 7, dtype)
    P = patch(*weights)
    got = patches.flatten_linear_directions(P, lin, r)
    dense = patches.to_directions(P, r).flatten(2) @ lin.T
    old = _old_formula(P[0], lin, P[1], P[2], r)
    assert got.shape == (batch, c0 * hw[0] * hw[1], 7)
    assert dense.abs().max() > 0.1
    tol = {} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(got, dense, **tol)
    torch.testing.assert_close(got, old, **tol)


def test_empty_batch():
    patch, weights, lin, r = _case(1, 1, (7, 7), [(3, 3, 1, 0, 1), (2, 2, 1, 0, 1)], 4, torch.float64)
    P = patch(*weights)
    P = (P[0][:, :, :, :0], P[1], P[2])
    assert patches.flatten_linear_directions(P, lin, r[:0]).shape == (0, 49, 4)


@pytest.mark.parametrize("batch,c0,hw,convs", CASES[:4])
def test_gradcheck(batch, c0, hw, convs):
    """Gradients in both conv weights (through the patches), the Linear weight and the radius."""
    patch, weights, lin, r = _case(batch, c0, hw, convs, 3, torch.float64, seed=1, grad=True)
    proj = torch.randn(batch, c0 * hw[0] * hw[1], 3, dtype=torch.float64)

    def f(lin, r, *ws):
        return (patches.flatten_linear_directions(patch(*ws), lin, r) * proj).sum()

    assert torch.autograd.gradcheck(f, (lin, r, *weights), eps=1e-6, atol=1e-7)


def test_gradients_equal_old_formula():
    """The hand-written backward against autograd of the earlier formula, on the small CNN's shapes."""
    patch, weights, lin, r = _case(3, 1, (28, 28), [(16, 4, 2, 0, 1), (32, 4, 1, 0, 1)], 10, torch.float64,
                                   grad=True)
    proj = torch.randn(3, 784, 10, dtype=torch.float64)
    grads = []
    for fn in (lambda P: patches.flatten_linear_directions(P, lin, r),
               lambda P: _old_formula(P[0], lin, P[1], P[2], r)):
        out = (F.relu(fn(patch(*weights))) * proj).sum()
        grads.append(torch.autograd.grad(out, (lin, r, *weights)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_kept_chunks_give_the_checkpointed_gradients(monkeypatch):
    """Default chunks within the memory target keep their graphs, the rest are checkpointed
    (chunking.chunked's ``keep``); the gradients equal those of one unchunked pass."""
    from etbkernels import bounds
    from etbkernels.network import api, chunking
    from etbkernels.network.models import small_cnn

    torch.manual_seed(0)
    model = small_cnn(1, 14, 3).double()
    x = torch.rand(7, 1, 14, 14, dtype=torch.float64)
    want = torch.autograd.grad(bounds(model, x, 0.05, chunk_size=7).radius.sum(), list(model.parameters()))
    monkeypatch.setattr(api, "forward_chunk", lambda *a: 2)
    monkeypatch.setattr(chunking, "kept_samples", lambda *a: 3)
    calls = []
    real = chunking.checkpoint
    monkeypatch.setattr(chunking, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = torch.autograd.grad(bounds(model, x, 0.05).radius.sum(), list(model.parameters()))
    assert len(calls) == 3  # chunks at 2, 4, 6 are checkpointed, the one at 0 kept
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("hidden", [(), (9, 6)])
def test_checkpoint_recomputation_replays_the_masks(monkeypatch, hidden):
    """A checkpointed chunk's recomputation reuses the masks its forward decided (no hidden radius
    or lazy-tail decision runs in backward) and gives the gradients of one unchunked pass, in the
    input, the radius and every weight."""
    from etbkernels import bounds
    from etbkernels.network import api, chunking, etb, etb_tail, patches

    torch.manual_seed(1)
    widths = (3 * 5 * 5,) + hidden + (4,)
    layers = [nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 3, 3, stride=2), nn.ReLU(), nn.Flatten()]
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers[:-1]).double()
    x = torch.rand(5, 1, 13, 13, dtype=torch.float64, requires_grad=True)
    eps = torch.full_like(x, 0.05, requires_grad=True)
    wrt = [x, eps] + list(model.parameters())
    want = torch.autograd.grad(bounds(model, x, eps, chunk_size=5).radius.sum(), wrt)
    monkeypatch.setattr(api, "forward_chunk", lambda *a: 2)
    monkeypatch.setattr(chunking, "kept_samples", lambda *a: 0)  # every chunk checkpointed
    decided = []
    for mod, name in [(patches, "radius"), (etb, "abs_sum_directions"), (etb_tail, "_decide")]:
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, real=real, name=name, **k: decided.append(name) or real(*a, **k))
    b = bounds(model, x, eps)
    in_forward = len(decided)
    assert in_forward >= 3 * 2  # three chunks, two hidden ReLUs at least
    got = torch.autograd.grad(b.radius.sum(), wrt)
    # the recomputation decided nothing: at most each chunk's output radius (no lazy tail) again
    assert set(decided[in_forward:]) <= {"abs_sum_directions"} and len(decided) - in_forward <= 3, decided
    assert ("_decide" in decided) == bool(hidden)  # with hidden Linear layers the lazy tail ran
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w)
