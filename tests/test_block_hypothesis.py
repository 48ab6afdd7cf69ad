"""Property-based tests (hypothesis): shapes, dtypes, strides and values are drawn at random.

CI runs a bounded, derandomized profile (see conftest: HYPOTHESIS_PROFILE=ci is the default).
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import etbkernels as E
from etbkernels import reference as R
from etbkernels.testing import TOLERANCES, box_points

dims = st.integers(min_value=1, max_value=40)


@st.composite
def blocks(draw):
    N, n, h, m = draw(st.integers(0, 12)), draw(dims), draw(dims), draw(dims)
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0]))
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * s).to(dtype)

    eps = draw(st.sampled_from([0.0, 1e-4, 0.1, 3.0]))
    center = rnd(N, n, s=scale)
    radius = (torch.rand(N, n, generator=g, dtype=torch.float64) * eps).to(dtype)
    w1, w2 = rnd(h, n, s=n ** -0.5), rnd(m, h, s=h ** -0.5)
    b1 = rnd(h) if draw(st.booleans()) else None
    b2 = rnd(m) if draw(st.booleans()) else None
    # Layout: contiguous, transposed storage for the weights, or a strided view of the centre.
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    if layout == "transposed":
        w1, w2 = w1.T.contiguous().T, w2.T.contiguous().T
    elif layout == "strided":
        wide = torch.zeros(N, 2 * n, dtype=dtype)
        wide[:, ::2] = center
        center = wide[:, ::2]
    return center, radius, w1, b1, w2, b2


def _close(a, b, dtype):
    rtol, atol = TOLERANCES[dtype]
    scale = 1 + b.abs().max().item() if b.numel() else 1
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol * scale)


@settings(deadline=None)
@given(blocks())
def test_ops_agree_with_reference(args):
    center, radius, w1, b1, w2, b2 = args
    c, r, s = E.ops.etb_block(center, radius, w1, b1, w2, b2, None, False)
    ref = R.etb_block_ref(center, radius, w1, b1, w2, b2, mask=s)
    _close(c, ref.center, center.dtype)
    _close(r, ref.radius, center.dtype)
    ibp, ibp_ref = E.ibp_block(*args), R.ibp_block_ref(*args)
    _close(ibp.center, ibp_ref.center, center.dtype)
    _close(ibp.radius, ibp_ref.radius, center.dtype)


@settings(deadline=None)
@given(blocks())
def test_lower_le_upper_and_layout_invariance(args):
    center, radius, w1, b1, w2, b2 = args
    contiguous = [t.contiguous() if t is not None else None for t in args]
    for fn in (E.etb_block, E.ibp_block):
        b = fn(*args)
        assert (b.lower <= b.upper).all()
        assert (b.radius >= 0).all()
        c = fn(*contiguous)
        _close(b.center, c.center, center.dtype)
        _close(b.radius, c.radius, center.dtype)


@settings(deadline=None)
@given(blocks())
def test_ibp_contains_sampled_points(args):
    center, radius, w1, b1, w2, b2 = [t.double() if t is not None else None for t in args]
    b = E.ibp_block(center, radius, w1, b1, w2, b2)
    x = box_points(center, radius, 64)
    y = R.block_forward_ref(x, w1, b1, w2, b2)
    slack = 1e-9 * (1 + y.abs())
    assert (y >= b.lower - slack).all() and (y <= b.upper + slack).all()


@settings(deadline=None, max_examples=15)
@given(blocks())
def test_batch_equals_per_sample(args):
    center, radius, w1, b1, w2, b2 = args
    if center.shape[0] == 0:
        return
    batch = E.etb_block(*args)
    i = center.shape[0] // 2
    one = E.etb_block(center[i], radius[i], w1, b1, w2, b2, mask=E.ops.etb_block(*args, None, False)[2][i])
    _close(one.center, batch.center[i], center.dtype)
    _close(one.radius, batch.radius[i], center.dtype)
