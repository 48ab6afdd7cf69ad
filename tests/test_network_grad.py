"""End-to-end differentiability (float64 gradcheck) and chunked/checkpointed gradients."""
import pytest
import torch
from torch import nn

from etbkernels.network import bounds, margin_spec

torch.manual_seed(4)


def _cnn():
    return nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 3)).double()


@pytest.mark.parametrize("method,mask", [("ibp", None), ("etb", "ibp"), ("etb", "etb")])
def test_gradcheck_x_eps_weight(method, mask):
    model = _cnn()
    x = torch.rand(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    eps = torch.full((1, 5, 5), 0.03, dtype=torch.float64, requires_grad=True)
    w = model[2].weight.detach().clone().requires_grad_(True)
    C = margin_spec(torch.tensor([0, 2]), 3, dtype=torch.float64)

    def f(x, eps, w):
        m = _cnn()
        m.load_state_dict(model.state_dict())
        del m[2].weight
        m[2].weight = w
        kw = {} if method == "ibp" else {"mask": mask}
        b = bounds(m, x, eps, method=method, spec=C, **kw)
        return b.lower, b.upper

    assert torch.autograd.gradcheck(f, (x, eps, w), eps=1e-6, atol=1e-7)


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
