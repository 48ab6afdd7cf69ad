"""End-to-end differentiability (float64 gradcheck) and chunked/checkpointed gradients."""
import pytest
import torch
from torch import nn

from etbkernels.network import bounds, margin_spec

torch.manual_seed(4)


def gradcheck_bounds(model, layers, x, eps, gradcheck_kw=None, **bounds_kw) -> bool:
    """float64 ``gradcheck`` of ``bounds(model, x, eps, **bounds_kw)`` (lower and upper) in x, eps
    and the weights of ``layers`` (modules of ``model``, whose weights become plain tensors so
    gradients flow to the gradcheck inputs)."""
    ws = [m.weight.detach().clone().requires_grad_(True) for m in layers]

    def fn(x, eps, *weights):
        for m, w in zip(layers, weights):
            del m.weight
            m.weight = w
        b = bounds(model, x, eps, **bounds_kw)
        return b.lower, b.upper

    return torch.autograd.gradcheck(fn, (x, eps, *ws), **(gradcheck_kw or {}))


def _cnn():
    return nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 3)).double()


@pytest.mark.parametrize("method,mask", [("ibp", None), ("crown-ibp", None), ("crown-forward", None), ("crown", None), ("etb", "ibp"),
                                         ("etb", "etb")])
def test_gradcheck_x_eps_weight(method, mask):
    model = _cnn()
    x = torch.rand(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    eps = torch.full((1, 5, 5), 0.03, dtype=torch.float64, requires_grad=True)
    C = margin_spec(torch.tensor([0, 2]), 3, dtype=torch.float64)
    kw = {} if mask is None else {"mask": mask}
    assert gradcheck_bounds(model, [model[2]], x, eps, dict(eps=1e-6, atol=1e-7), method=method, spec=C, **kw)


def test_chunked_checkpointed_grads_match():
    model = _cnn()
    x = torch.rand(5, 1, 5, 5, dtype=torch.float64)
    grads = []
    for chunk in (None, 2):
        model.zero_grad()
        xx = x.clone().requires_grad_(True)
        b = bounds(model, xx, 0.05, chunk_size=chunk)
        (b.upper.sum() + 2 * b.lower.square().sum()).backward()
        grads.append([xx.grad] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("stride,padding,dilation,groups", [(1, 1, 1, 1), (2, 0, 1, 1), (1, 2, 2, 2)])
def test_patch_ops_gradcheck(stride, padding, dilation, groups):
    """The hand-written backward of the patches conv, and the other patch ops, against finite differences."""
    from etbkernels.network import patches
    from etbkernels.network.layers import ConvOp

    torch.manual_seed(7)
    w0 = torch.randn(4, 1, 2, 2, dtype=torch.float64, requires_grad=True)  # gradient flows into P too
    w = torch.randn(4, 4 // groups, 2, 2, dtype=torch.float64, requires_grad=True)
    r = torch.rand(2, 1, 7, 7, dtype=torch.float64)
    s = (torch.rand(2, 4, 6, 6) > 0.3).double()
    proj = torch.randn(3, 20000, dtype=torch.float64)
    out_hw = ConvOp(w.detach(), None, (stride, stride), (padding, padding), (dilation, dilation), groups,
                    (4, 6, 6)).out_shape
    lin_w = torch.randn(3, out_hw[0] * out_hw[1] * out_hw[2], dtype=torch.float64)

    def f(w0, w):
        conv0 = ConvOp(w0, None, (1, 1), (0, 0), (1, 1), 1, (1, 7, 7))
        P = patches.apply(patches.identity((1, 7, 7), torch.float64, "cpu"), conv0)
        P = patches.mask(P, s)
        op = ConvOp(w, None, (stride, stride), (padding, padding), (dilation, dilation), groups, (4, 6, 6))
        P = patches.apply(P, op)
        dense = patches.to_directions(P, r)
        lin = patches.flatten_linear_directions(P, lin_w, r)
        rad = patches.radius(P, r)
        # random projections keep the analytical Jacobian to a few backward passes
        return tuple((t * proj[k][: t[0].numel()].reshape(t.shape[1:])).sum() for k, t in enumerate((rad, dense, lin)))

    assert torch.autograd.gradcheck(f, (w0, w), eps=1e-6, atol=1e-7)
