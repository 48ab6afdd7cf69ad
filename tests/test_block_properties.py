"""Properties that hold for every input: IBP soundness, ETB exactness for the masked linear
map, tightness vs IBP, batch = per-sample, determinism."""
import pytest
import torch

import etbkernels as E
from etbkernels import reference as R
from etbkernels.testing import box_points, random_block


@pytest.mark.parametrize("shape", [(4, 3, 5, 2), (6, 20, 40, 10), (2, 100, 64, 8)], ids=str)
@pytest.mark.parametrize("eps", [0.01, 0.3, 2.0])
def test_ibp_contains_sampled_points_and_vertices(shape, eps):
    blk = random_block(*shape, eps=eps, seed=shape[1])
    b = E.ibp_block(*blk.args())
    x = box_points(blk.center, blk.radius, 400)  # (400, N, n), half of them vertices
    y = R.block_forward_ref(x, blk.w1, blk.b1, blk.w2, blk.b2)
    slack = 1e-12 * (1 + b.upper.abs())
    assert (y >= b.lower - slack).all() and (y <= b.upper + slack).all()


@pytest.mark.parametrize("eps", [0.01, 0.5])
def test_etb_is_exact_for_the_masked_linear_map(eps):
    """With the mask fixed, T(x) = W2 S (W1 x + b1) + b2 is affine, and ETB's interval is its exact
    range over the box: it contains every T(x) and vertices reach both ends."""
    blk = random_block(5, 6, 9, 4, eps=eps, seed=1)
    c, r, w1, b1, w2, b2 = blk.args()
    _, _, s = E.ops.etb_block(c, r, w1, b1, w2, b2, None, False)
    b = E.etb_block(*blk.args())
    x = box_points(c, r, 2000)
    t = ((x @ w1.T + b1) * s) @ w2.T + b2
    tol = 1e-12
    assert (t >= b.lower - tol).all() and (t <= b.upper + tol).all()
    # The vertex x = c + r * sign(P row) attains the upper end of each output.
    P = (w2 * s[:, None, :]) @ w1  # (N, m, n)
    x_best = c[:, None, :] + r[:, None, :] * torch.sign(P)
    t_best = torch.einsum("njk,njk->nj", P, x_best) + ((b1 * s) @ w2.T) + b2
    torch.testing.assert_close(t_best, b.upper, rtol=1e-10, atol=1e-10)


def test_etb_far_tighter_than_ibp_on_gaussian_blocks():
    blk = random_block(32, 784, 1024, 10, dtype=torch.float32, eps=0.02, seed=4)
    etb, ibp = E.etb_block(*blk.args()), E.ibp_block(*blk.args())
    ratio = (etb.width.mean() / ibp.width.mean()).item()
    assert ratio < 0.2, ratio
    assert (etb.width <= ibp.width * 1.0001).float().mean() > 0.99


@pytest.mark.parametrize("fn", [E.etb_block, E.ibp_block])
def test_batch_equals_per_sample(fn, cpu_strategy):
    blk = random_block(7, 31, 23, 19, eps=0.2)
    batch = fn(*blk.args())
    for i in range(7):
        one = fn(blk.center[i], blk.radius[i], blk.w1, blk.b1, blk.w2, blk.b2)
        torch.testing.assert_close(one.center, batch.center[i], rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(one.radius, batch.radius[i], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bitwise_deterministic_forward_and_backward(dtype, cpu_strategy):
    blk = random_block(64, 120, 200, 90, dtype=dtype, eps=0.1, seed=8)

    def run():
        leaves = [t.detach().clone().requires_grad_(True) for t in blk.args()]
        b = E.etb_block(*leaves)
        (b.lower.sin().sum() + b.upper.cos().sum()).backward()
        return [b.lower, b.upper] + [t.grad for t in leaves]

    for a, b in zip(run(), run()):
        assert torch.equal(a, b)
