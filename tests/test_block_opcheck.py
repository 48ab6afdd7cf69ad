"""torch.library.opcheck on every op, and torch.compile(fullgraph=True) against eager."""
import pytest
import torch

import etbkernels as E
from etbkernels.testing import devices, random_block

ops = E.ops


def _req(blk, *, grad):
    return [t.detach().clone().requires_grad_(grad) if t is not None else None for t in blk.args()]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("grad", [True, False])
def test_opcheck_forward_ops(device, dtype, bias, grad):
    blk = random_block(5, 9, 11, 7, dtype=dtype, device=device, bias=bias, eps=0.3)
    c, r, w1, b1, w2, b2 = _req(blk, grad=grad)
    mask = (torch.rand(5, 11, device=device) < 0.5)
    torch.library.opcheck(ops.etb_block.default, (c, r, w1, b1, w2, b2, None, False))
    torch.library.opcheck(ops.etb_block.default, (c, r, w1, b1, w2, b2, mask, True))
    torch.library.opcheck(ops.ibp_block.default, (c, r, w1, b1, w2, b2))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("output_center", [False, True])
def test_opcheck_backward_ops(device, output_center):
    blk = random_block(4, 6, 8, 5, device=device, eps=0.3)
    c, r, w1, b1, w2, b2 = blk.args()
    _, _, s = ops.etb_block(c, r, w1, b1, w2, b2, None, output_center)
    g_c, g_r = torch.randn(4, 5, dtype=c.dtype, device=device), torch.randn(4, 5, dtype=c.dtype, device=device)
    torch.library.opcheck(ops.etb_block_backward.default, (g_c, g_r, c, r, w1, b1, w2, s, output_center))
    torch.library.opcheck(ops.ibp_block_backward.default, (g_c, g_r, c, r, w1, b1, w2))


def _bounds_fn(x, eps, w1, b1, w2, b2):
    etb = E.etb_block(x, eps, w1, b1, w2, b2)
    ibp = E.ibp_block(x, eps, w1, b1, w2, b2)
    return etb.lower, etb.upper, etb.radius, ibp.lower, ibp.upper


@pytest.mark.parametrize("device", devices())
def test_compile_fullgraph_matches_eager(device):
    torch._dynamo.reset()
    blk = random_block(6, 10, 12, 4, dtype=torch.float32, device=device, eps=0.2)
    args = (blk.center, 0.05, blk.w1, blk.b1, blk.w2, blk.b2)
    compiled = torch.compile(_bounds_fn, fullgraph=True)
    for got, want in zip(compiled(*args), _bounds_fn(*args)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_compile_fullgraph_backward_matches_eager():
    torch._dynamo.reset()
    blk = random_block(6, 10, 12, 4, dtype=torch.float32, eps=0.2)
    a1, a2 = _req(blk, grad=True), _req(blk, grad=True)

    def loss(c, r, w1, b1, w2, b2):
        b = E.etb_block(c, r, w1, b1, w2, b2, center_at="output")
        return (b.upper - b.lower).sum() + b.center.square().sum()

    torch.compile(loss, fullgraph=True)(*a1).backward()
    loss(*a2).backward()
    for t1, t2 in zip(a1, a2):
        torch.testing.assert_close(t1.grad, t2.grad, rtol=1e-5, atol=1e-5)
