"""Kernels vs the pure-PyTorch reference on awkward sizes, dtypes, layouts and options."""
import pytest
import torch

import etbkernels as E
from etbkernels import reference as R
from etbkernels.testing import KERNEL_DTYPES, TOLERANCES, devices, random_block

# (N, n, h, m): ones, primes, 257 (past a power of two), batch 1, a batch of several hundred,
# and m / n that are not multiples of the CPU tile height.
SHAPES = [
    (1, 1, 1, 1),
    (1, 7, 5, 3),
    (2, 3, 1, 2),
    (13, 17, 19, 23),
    (5, 257, 31, 257),
    (1, 257, 129, 130),
    (300, 11, 13, 7),
    (37, 100, 61, 333),
    (3, 1025, 7, 17),
    (3, 1025, 7, 130),  # several row tiles plus a remainder (gathered strategy)
    (50, 300, 20, 10),  # several stacked sample groups plus a remainder (stacked strategy)
]


def assert_close(actual, expected, dtype):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def op_with_mask(blk, center_at="linear"):
    """The kernel's bounds and the mask it used (straight from the op)."""
    c, r, w1, b1, w2, b2 = blk.args()
    return E.ops.etb_block(c, r, w1, b1, w2, b2, None, center_at == "output")


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("center_at", ["linear", "output"])
def test_etb_matches_reference(shape, dtype, device, center_at, cpu_strategy):
    blk = random_block(*shape, dtype=dtype, device=device, eps=0.3, seed=sum(shape))
    c_out, r_out, s = op_with_mask(blk, center_at)
    # The mask: equal to the reference's except where c1 + |W1| r is within rounding of 0.
    c1 = blk.center @ blk.w1.T + blk.b1
    pre = c1 + blk.radius @ blk.w1.abs().T
    s_ref = R.etb_mask_ref(*blk.args()[:4])
    borderline = pre.abs() <= 1e-5 * (c1.abs() + 1)
    assert torch.equal(s[~borderline], s_ref[~borderline])
    # Bounds: equal to the reference run with the same mask.
    ref = R.etb_block_ref(*blk.args(), mask=s, center_at=center_at)
    assert_close(c_out, ref.center, dtype)
    assert_close(r_out, ref.radius, dtype)
    assert not torch.isnan(r_out).any()
    # And the public wrapper returns the same thing.
    b = E.etb_block(*blk.args(), center_at=center_at)
    assert torch.equal(b.center, c_out) and torch.equal(b.radius, r_out)
    assert torch.equal(b.lower, c_out - r_out) and torch.equal(b.upper, c_out + r_out)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_ibp_matches_reference(shape, dtype, device):
    blk = random_block(*shape, dtype=dtype, device=device, eps=0.3, seed=sum(shape) + 1)
    b, ref = E.ibp_block(*blk.args()), R.ibp_block_ref(*blk.args())
    assert_close(b.center, ref.center, dtype)
    assert_close(b.radius, ref.radius, dtype)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_given_mask_bool_and_float(dtype):
    blk = random_block(9, 31, 41, 29, dtype=dtype, eps=0.2)
    mask = torch.rand(9, 41) < 0.4
    ref = R.etb_block_ref(*blk.args(), mask=mask)
    for m in (mask, mask.to(dtype), mask.to(torch.int64)):
        b = E.etb_block(*blk.args(), mask=m)
        assert_close(b.center, ref.center, dtype)
        assert_close(b.radius, ref.radius, dtype)
    # An all-zero mask leaves only the bias: center = b2, radius = 0.
    b = E.etb_block(*blk.args(), mask=torch.zeros(9, 41, dtype=torch.bool))
    assert torch.equal(b.radius, torch.zeros_like(b.radius))
    assert_close(b.center, blk.b2.expand(9, -1), dtype)


def test_no_biases():
    blk = random_block(6, 20, 30, 10, bias=False)
    for fn, ref in ((E.etb_block, R.etb_block_ref), (E.ibp_block, R.ibp_block_ref)):
        b, r = fn(*blk.args()), ref(*blk.args())
        assert_close(b.center, r.center, torch.float64)
        assert_close(b.radius, r.radius, torch.float64)


def test_one_dimensional_center_and_broadcast_radius():
    blk = random_block(4, 12, 9, 5)
    batch = E.etb_block(blk.center, 0.1, blk.w1, blk.b1, blk.w2, blk.b2)
    full = E.etb_block(blk.center, torch.full_like(blk.center, 0.1), blk.w1, blk.b1, blk.w2, blk.b2)
    assert torch.equal(batch.radius, full.radius)
    per_feature = torch.linspace(0.01, 0.2, 12, dtype=torch.float64)
    pf = E.etb_block(blk.center, per_feature, blk.w1, blk.b1, blk.w2, blk.b2)
    pf_full = E.etb_block(blk.center, per_feature.expand(4, 12).clone(), blk.w1, blk.b1, blk.w2, blk.b2)
    assert torch.equal(pf.radius, pf_full.radius)
    for fn in (E.etb_block, E.ibp_block):
        one = fn(blk.center[2], per_feature, blk.w1, blk.b1, blk.w2, blk.b2)
        assert one.center.shape == (5,)
        assert_close(one.radius, fn(*blk.args()[:1], per_feature, *blk.args()[2:]).radius[2], torch.float64)


def test_noncontiguous_and_expanded_inputs():
    blk = random_block(8, 24, 16, 12)
    expected = E.etb_block(*blk.args())
    # Transposed-storage weights, a strided slice of a wider centre, an expanded radius.
    w1_t = blk.w1.T.contiguous().T
    w2_t = blk.w2.T.contiguous().T
    wide = torch.zeros(8, 48, dtype=torch.float64)
    wide[:, ::2] = blk.center
    r_exp = blk.radius[:1].expand(8, 24)
    b = E.etb_block(wide[:, ::2], blk.radius, w1_t, blk.b1, w2_t, blk.b2)
    assert not w1_t.is_contiguous() and not wide[:, ::2].is_contiguous()
    torch.testing.assert_close(b.radius, expected.radius, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(b.center, expected.center, rtol=1e-12, atol=1e-14)
    b2 = E.etb_block(blk.center, r_exp, blk.w1, blk.b1, blk.w2, blk.b2)
    r2 = R.etb_block_ref(blk.center, r_exp.contiguous(), blk.w1, blk.b1, blk.w2, blk.b2)
    assert_close(b2.radius, r2.radius, torch.float64)


def test_empty_batch_and_zero_width_layers():
    blk = random_block(0, 5, 7, 3)
    for fn in (E.etb_block, E.ibp_block):
        b = fn(*blk.args())
        assert b.lower.shape == (0, 3) and b.upper.shape == (0, 3)
    # h = 0: the block is the constant b2.
    blk = random_block(4, 5, 0, 3)
    for fn in (E.etb_block, E.ibp_block):
        b = fn(*blk.args())
        assert torch.equal(b.radius, torch.zeros(4, 3, dtype=torch.float64))
        assert torch.equal(b.center, blk.b2.expand(4, 3))
    # n = 0: no input, so zero radius and the centre W2 relu(b1) + b2.
    blk = random_block(4, 0, 6, 3)
    for fn in (E.etb_block, E.ibp_block):
        b = fn(*blk.args())
        assert torch.equal(b.radius, torch.zeros(4, 3, dtype=torch.float64))
        assert_close(b.center, (torch.relu(blk.b1) @ blk.w2.T + blk.b2).expand(4, 3), torch.float64)
    # m = 0
    blk = random_block(4, 5, 6, 0)
    assert E.etb_block(*blk.args()).lower.shape == (4, 0)


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fn,ref", [(E.etb_block, R.etb_block_ref), (E.ibp_block, R.ibp_block_ref)])
def test_low_precision_within_2x_of_torch_error(low, fn, ref):
    """float16/bfloat16 in, float32 accumulation, result in the input dtype: its error against a
    float64 reference is at most ~2x PyTorch's own error computing the reference in that dtype."""
    blk_low = random_block(16, 64, 96, 32, dtype=low, eps=0.1, seed=3)
    blk_from_low = [t.double() if t is not None else None for t in blk_low.args()]
    mask = R.etb_mask_ref(*blk_from_low[:4]) if fn is E.etb_block else None
    kwargs = {"mask": mask} if mask is not None else {}
    exact = ref(*blk_from_low, **kwargs)
    ours = fn(*blk_low.args(), **{k: v.to(low) for k, v in kwargs.items()})
    theirs = ref(*blk_low.args(), **{k: v.to(low) for k, v in kwargs.items()})
    assert ours.center.dtype == low
    for field in ("center", "radius"):
        err_ours = (getattr(ours, field).double() - getattr(exact, field)).abs().max()
        err_torch = (getattr(theirs, field).double() - getattr(exact, field)).abs().max()
        assert err_ours <= 2 * err_torch + 1e-3, (field, err_ours.item(), err_torch.item())


def test_nan_and_inf_inputs():
    """Documented behaviour: NaN reaches the bounds it touches; it is never dropped silently."""
    blk = random_block(3, 8, 10, 4)
    c = blk.center.clone()
    c[1, 2] = float("nan")
    b = E.etb_block(c, blk.radius, blk.w1, blk.b1, blk.w2, blk.b2)
    assert torch.isnan(b.lower[1]).all() and torch.isnan(b.upper[1]).all()
    assert not torch.isnan(b.lower[[0, 2]]).any()
    r = blk.radius.clone()
    r[0, 0] = float("nan")
    for fn in (E.etb_block, E.ibp_block):
        b = fn(blk.center, r, blk.w1, blk.b1, blk.w2, blk.b2)
        assert torch.isnan(b.radius[0]).all() and not torch.isnan(b.radius[1:]).any()
    w1 = blk.w1.clone()
    w1[0, 0] = float("nan")
    assert torch.isnan(E.etb_block(blk.center, blk.radius, w1, blk.b1, blk.w2, blk.b2).radius).any()
    # An infinite radius: the bound is infinite (never a finite-looking number).
    r = blk.radius.clone()
    r[2, :] = float("inf")
    for fn in (E.etb_block, E.ibp_block):
        b = fn(blk.center, r, blk.w1, blk.b1, blk.w2, blk.b2)
        assert not torch.isfinite(b.radius[2]).any()
        assert torch.isfinite(b.radius[:2]).all()
