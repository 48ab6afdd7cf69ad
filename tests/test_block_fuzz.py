"""Fuzz-style checks of the block ops against the float64 references, aimed at the corners the other
block tests leave out: both CPU strategies on the same inputs with gradients of any subset of the
inputs, given masks of every kind (bool / int / float, all-zero / all-one / per sample, expanded,
transposed), sizes at the strategy boundary (m = 31 / 32 / 33) with h or n of 1, every broadcast shape
of the radius, 1-D inputs with 1-D masks, extreme magnitudes, ETBK_CPU_TILE_KB, two threads, opcheck on
degenerate shapes and torch.compile with a given mask. The bugs it found are regression tests at the end.
"""
import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch

import etbkernels as E
from etbkernels import reference as R
from etbkernels.testing import random_block

STRATEGIES = ["gathered", "stacked", None]  # None: automatic choice


@pytest.fixture
def strategy_env(monkeypatch):
    def set_strategy(strategy):
        if strategy is None:
            monkeypatch.delenv("ETBK_CPU_STRATEGY", raising=False)
        else:
            monkeypatch.setenv("ETBK_CPU_STRATEGY", strategy)

    return set_strategy


def _leaves(args, req, dtype=None):
    out = []
    for t, q in zip(args, req):
        if t is None:
            out.append(None)
            continue
        t = t.detach().clone() if dtype is None else t.detach().to(dtype).clone()
        out.append(t.requires_grad_(q))
    return out


def _make_mask(kind, N, h, g):
    if kind is None:
        return None
    if kind == "bool":
        return torch.rand(N, h, generator=g) < 0.5
    if kind == "int":
        return (torch.rand(N, h, generator=g) < 0.5).to(torch.int64)
    if kind == "zero":
        return torch.zeros(N, h)
    if kind == "one":
        return torch.ones(N, h, dtype=torch.float64)
    if kind == "rowzero":  # every other sample has no active unit
        m = (torch.rand(N, h, generator=g) < 0.7).double()
        m[::2] = 0
        return m
    if kind == "expanded":
        return (torch.rand(h, generator=g) < 0.5).expand(N, h)
    if kind == "transposed":
        return (torch.rand(h, N, generator=g) < 0.5).double().T
    raise AssertionError(kind)


def _check_fwd_bwd(args, dtype, *, mask=None, center_at="linear", req=(True,) * 6, seed=0):
    """Op (in `dtype`) vs the float64 reference (fed the op's own mask): bounds and every gradient."""
    L1 = _leaves(args, req)
    L2 = _leaves(args, req, torch.float64)
    b = E.etb_block(*L1, mask=mask, center_at=center_at)
    s = E.ops.etb_block(*[None if t is None else t.detach() for t in L1], mask, center_at == "output")[2]
    if mask is None and dtype == torch.float64:  # the op's own mask is the reference's
        assert torch.equal(s.double(), R.etb_mask_ref(*[None if t is None else t.detach() for t in L2[:4]]))
    ref = R.etb_block_ref(*L2, mask=s.double(), center_at=center_at)
    rtol, atol = (1e-9, 1e-11) if dtype == torch.float64 else (1e-4, 1e-5)
    scale = 1 + (ref.upper.abs().max().item() if ref.upper.numel() else 0)
    torch.testing.assert_close(b.center.double(), ref.center, rtol=rtol, atol=atol * scale)
    torch.testing.assert_close(b.radius.double(), ref.radius, rtol=rtol, atol=atol * scale)
    N, m = ref.center.shape
    if N == 0 or m == 0 or not any(t is not None and t.requires_grad for t in L1):
        return
    g = torch.Generator().manual_seed(seed)
    g1 = torch.randn(N, m, generator=g, dtype=torch.float64)
    g2 = torch.randn(N, m, generator=g, dtype=torch.float64)
    (b.lower.double() * g1 + b.upper.double() * g2).sum().backward()
    (ref.lower * g1 + ref.upper * g2).sum().backward()
    for i, (x, y) in enumerate(zip(L1, L2)):
        if x is None or not x.requires_grad:
            continue
        xg = torch.zeros_like(x) if x.grad is None else x.grad
        yg = torch.zeros_like(y) if y.grad is None else y.grad
        assert xg.shape == x.shape and xg.dtype == x.dtype, i
        gscale = 1 + (yg.abs().max().item() if yg.numel() else 0)
        torch.testing.assert_close(xg.double(), yg, rtol=10 * rtol, atol=10 * atol * gscale, msg=f"grad {i}")


# ---------------------------------------------------------------- randomized sweep
@pytest.mark.parametrize("seed", range(4))
def test_random_sweep_forward_and_gradients(seed, strategy_env):
    rng = random.Random(seed)
    dims = [1, 2, 3, 5, 8, 16, 17, 31, 32, 33, 47, 64, 65]
    for case in range(60):
        N = rng.choice([0, 1, 2, 3, 7, 33, 70])
        n, h, m = rng.choice(dims), rng.choice(dims), rng.choice(dims)
        dtype = rng.choice([torch.float32, torch.float64])
        strategy_env(rng.choice(STRATEGIES))
        g = torch.Generator().manual_seed(1000 * seed + case)
        rn = lambda *s, sc=1.0: torch.randn(*s, generator=g, dtype=torch.float64) * sc  # noqa: E731
        c = rn(N, n)
        r = torch.rand(N, n, generator=g, dtype=torch.float64) * rng.choice([0.0, 0.01, 0.5, 3.0])
        w1, w2 = rn(h, n, sc=n ** -0.5), rn(m, h, sc=h ** -0.5)
        b1 = rn(h) if rng.random() < 0.7 else None
        b2 = rn(m) if rng.random() < 0.7 else None
        args = [None if t is None else t.to(dtype) for t in (c, r, w1, b1, w2, b2)]
        layout = rng.choice(["contiguous", "transposed", "strided"])
        if layout == "transposed":
            args[2], args[4] = args[2].T.contiguous().T, args[4].T.contiguous().T
        elif layout == "strided":
            wide = torch.zeros(N, 2 * n, dtype=dtype)
            wide[:, 1::2] = args[0]
            args[0] = wide[:, 1::2]
        mask = _make_mask(rng.choice([None, None, "bool", "int", "zero", "one", "rowzero", "expanded", "transposed"]),
                          N, h, g)
        req = [rng.random() < 0.6 for _ in range(6)]
        _check_fwd_bwd(args, dtype, mask=mask, center_at=rng.choice(["linear", "output"]), req=req, seed=case)


# ---------------------------------------------------------------- strategy / tile boundaries
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("shape", [(3, 1, 1, 31), (3, 1, 1, 32), (2, 5, 1, 33), (4, 1, 7, 32), (200, 1, 2, 3),
                                   (150, 2, 1, 40), (1, 1, 100, 100), (2, 3000, 4, 40), (2, 5000, 3, 17)], ids=str)
def test_boundary_shapes_both_strategies(shape, strategy, strategy_env):
    strategy_env(strategy)
    for center_at in ("linear", "output"):
        for bias in (True, False):
            blk = random_block(*shape, eps=0.3, bias=bias, seed=sum(shape))
            _check_fwd_bwd(list(blk.args()), torch.float64, center_at=center_at)
    ib, ir = E.ibp_block(*blk.args()), R.ibp_block_ref(*blk.args())
    torch.testing.assert_close(ib.lower, ir.lower, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ib.upper, ir.upper, rtol=1e-10, atol=1e-12)


def test_two_threads_match_reference(strategy_env):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for strategy in ("gathered", "stacked"):
            strategy_env(strategy)
            for shape in [(9, 20, 30, 40), (41, 7, 9, 5), (1, 50, 60, 70)]:
                blk = random_block(*shape, eps=0.2, seed=4)
                _check_fwd_bwd(list(blk.args()), torch.float64, mask=_make_mask("rowzero", shape[0], shape[2],
                                                                                torch.Generator().manual_seed(0)))
                _check_fwd_bwd(list(blk.args()), torch.float64, center_at="output")
    finally:
        torch.set_num_threads(before)


def test_tile_size_environment_switch():
    """ETBK_CPU_TILE_KB is read once per process: tiny tiles (16 rows) split every P into several tiles."""
    script = textwrap.dedent("""
        import os, torch
        import etbkernels as E
        from etbkernels import reference as R
        from etbkernels.testing import random_block
        torch.set_num_threads(1)
        if True:
            for strategy in ["gathered", "stacked"]:
                os.environ["ETBK_CPU_STRATEGY"] = strategy
                for shape in [(3, 5, 7, 40), (2, 300, 20, 33), (40, 3, 4, 2), (5, 130, 9, 5)]:
                    blk = random_block(*shape, eps=0.3, seed=3)
                    L1 = [t.detach().clone().requires_grad_(True) for t in blk.args()]
                    L2 = [t.detach().clone().requires_grad_(True) for t in blk.args()]
                    mask = (torch.rand(shape[0], shape[2]) < 0.5)
                    mask[0] = False
                    b = E.etb_block(*L1, mask=mask)
                    ref = R.etb_block_ref(*L2, mask=mask.double())
                    torch.testing.assert_close(b.radius, ref.radius, rtol=1e-10, atol=1e-12)
                    b.radius.sin().sum().backward(); ref.radius.sin().sum().backward()
                    for x, y in zip(L1, L2):
                        xg = torch.zeros_like(x) if x.grad is None else x.grad
                        yg = torch.zeros_like(y) if y.grad is None else y.grad
                        torch.testing.assert_close(xg, yg, rtol=1e-9, atol=1e-11)
        print("ok")
    """)
    env = dict(os.environ, ETBK_CPU_TILE_KB="1", OMP_NUM_THREADS="1", ETBK_POISON="1")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


# ---------------------------------------------------------------- radius shapes, 1-D, masks
@pytest.mark.parametrize("rshape", [(), (6,), (1, 6), (4, 1), (1, 1), (4, 6)], ids=str)
@pytest.mark.parametrize("fn", ["etb", "ibp"])
def test_radius_broadcast_shapes_values_and_grad_shape(rshape, fn):
    c, _, w1, b1, w2, b2 = random_block(4, 6, 5, 3, seed=2).args()
    rad = (torch.rand(rshape, dtype=torch.float64) * 0.3).requires_grad_(True)
    rad2 = rad.detach().clone().requires_grad_(True)
    op, ref_fn = (E.etb_block, R.etb_block_ref) if fn == "etb" else (E.ibp_block, R.ibp_block_ref)
    b = op(c, rad, w1, b1, w2, b2)
    ref = ref_fn(c, rad2.expand(4, 6), w1, b1, w2, b2)
    torch.testing.assert_close(b.lower, ref.lower, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b.upper, ref.upper, rtol=1e-10, atol=1e-12)
    (b.upper - 2 * b.lower).sum().backward()
    (ref.upper - 2 * ref.lower).sum().backward()
    assert rad.grad.shape == rad.shape
    torch.testing.assert_close(rad.grad, rad2.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mask", [None, torch.tensor([1, 0, 1, 0, 1], dtype=torch.bool),
                                  torch.tensor([1.0, 0, 1, 0, 1], dtype=torch.float64), torch.tensor([[1, 0, 1, 1, 0]]),
                                  torch.zeros(5, dtype=torch.float32)], ids=["none", "bool", "f64", "int2d", "zero"])
@pytest.mark.parametrize("center_at", ["linear", "output"])
def test_one_dimensional_center_with_masks(mask, center_at):
    c, r, w1, b1, w2, b2 = random_block(1, 6, 5, 3, eps=0.3, seed=5).args()
    leaves = [c[0].clone().requires_grad_(True), r[0].clone().requires_grad_(True)]
    b = E.etb_block(*leaves, w1, b1, w2, b2, mask=mask, center_at=center_at)
    assert b.lower.shape == (3,)
    ref = R.etb_block_ref(c, r, w1, b1, w2, b2, center_at=center_at,
                          mask=None if mask is None else mask.reshape(1, 5).double())
    torch.testing.assert_close(b.lower, ref.lower[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b.upper, ref.upper[0], rtol=1e-10, atol=1e-12)
    b.radius.sum().backward()
    assert leaves[0].grad.shape == (6,) and leaves[1].grad.shape == (6,)


@pytest.mark.parametrize("strategy", ["gathered", "stacked"])
def test_all_zero_mask_gives_zero_radius_and_constant_center(strategy, strategy_env):
    strategy_env(strategy)
    c, r, w1, b1, w2, b2 = random_block(3, 4, 6, 40 if strategy == "gathered" else 5, seed=1).args()
    r = r.clone()
    r[1] = float("inf")  # README: a sample with no active unit has radius 0, on every strategy
    for mask in (torch.zeros(3, 6), torch.zeros(3, 6, dtype=torch.bool), torch.full((3, 6), -0.0, dtype=torch.float64)):
        b = E.etb_block(c, r, w1, b1, w2, b2, mask=mask)
        assert torch.equal(b.radius, torch.zeros_like(b.radius))
        torch.testing.assert_close(b.center, b2.expand(3, -1), rtol=0, atol=0)


# ---------------------------------------------------------------- magnitudes, low precision
@pytest.mark.parametrize("strategy", ["gathered", "stacked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scales", [(1e-40, 1.0, 1.0), (1e-20, 1e-20, 1.0), (1.0, 1e30, 1e-5), (1e10, 1.0, 1.0),
                                    (1e-3, 1.0, 1e-18), (1e3, 1e3, 1e3)], ids=str)
def test_extreme_magnitudes_relative_error(scales, dtype, strategy, strategy_env):
    strategy_env(strategy)
    rs, cs, ws = scales
    c, r, w1, b1, w2, b2 = random_block(4, 9, 11, 5, eps=1.0, seed=5).args()
    args = [t.to(dtype) for t in (c * cs, r * rs, w1 * ws, b1, w2 * ws, b2)]
    a64 = [t.double() for t in args]
    s = E.ops.etb_block(*args, None, False)[2]
    for got, ref in ((E.etb_block(*args), R.etb_block_ref(*a64, mask=s.double())),
                     (E.ibp_block(*args), R.ibp_block_ref(*a64))):
        rel = ((got.radius.double() - ref.radius).abs() / ref.radius.abs().clamp_min(1e-300)).max().item()
        assert rel < (1e-4 if dtype == torch.float32 else 1e-10), rel


@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_low_precision_gradients_dtype_and_values(low):
    blk = random_block(5, 20, 30, 40, eps=0.1, seed=2, dtype=low)
    L = [t.detach().clone().requires_grad_(True) for t in blk.args()]
    L32 = [t.detach().float().clone().requires_grad_(True) for t in blk.args()]
    b, b32 = E.etb_block(*L, center_at="output"), E.etb_block(*L32, center_at="output")
    assert b.lower.dtype == low
    b.upper.float().sum().backward()
    b32.upper.sum().backward()
    tol = 2 ** -7 if low == torch.bfloat16 else 2 ** -10
    for x, y in zip(L, L32):
        assert x.grad.dtype == low
        torch.testing.assert_close(x.grad.float(), y.grad, rtol=2 * tol, atol=2 * tol * (1 + y.grad.abs().max().item()))


# ---------------------------------------------------------------- opcheck / compile
@pytest.mark.parametrize("shape", [(0, 3, 4, 2), (3, 0, 4, 2), (3, 4, 0, 2), (3, 4, 5, 0), (1, 1, 1, 1), (2, 1, 1, 33)],
                         ids=str)
def test_opcheck_degenerate_shapes(shape):
    N, n, h, m = shape
    blk = random_block(*shape, eps=0.3, bias=False)
    c, r, w1, b1, w2, b2 = [t if t is None else t.clone().requires_grad_(True) for t in blk.args()]
    ops = E.ops
    torch.library.opcheck(ops.etb_block.default, (c, r, w1, b1, w2, b2, None, True))
    torch.library.opcheck(ops.etb_block.default, (c, r, w1, b1, w2, b2, torch.ones(N, h, dtype=torch.bool), False))
    torch.library.opcheck(ops.ibp_block.default, (c, r, w1, b1, w2, b2))
    args = [t.detach() if t is not None else None for t in (c, r, w1, b1, w2, b2)]
    s = ops.etb_block(*args, None, False)[2]
    gc, gr = torch.randn(N, m, dtype=torch.float64), torch.randn(N, m, dtype=torch.float64)
    torch.library.opcheck(ops.etb_block_backward.default, (gc, gr, *args[:5], s, False))
    torch.library.opcheck(ops.ibp_block_backward.default, (gc, gr, *args[:5]))


def test_compile_fullgraph_with_given_mask_and_dynamic_batch():
    torch._dynamo.reset()
    _, _, w1, b1, w2, b2 = random_block(4, 6, 5, 3, dtype=torch.float32).args()

    def f(c, w1, b1, w2, b2, mask):
        b = E.etb_block(c, 0.1, w1, b1, w2, b2, mask=mask, center_at="output")
        i = E.ibp_block(c, 0.1, w1, b1, w2, b2)
        return b.lower, b.upper, i.upper

    cf = torch.compile(f, fullgraph=True, dynamic=True)
    for N in (4, 7, 1):
        c, mask = torch.randn(N, 6), torch.rand(N, 5) < 0.5
        for got, want in zip(cf(c, w1, b1, w2, b2, mask), f(c, w1, b1, w2, b2, mask)):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- regressions
# Regression (fixed 2026-11-27): etb_block returns the caller's mask itself as its third output when the
# mask already has the centre's dtype and is contiguous (csrc/checks.h prepare_mask:
# mask.to(dtype).contiguous() is a no-op), so the output aliases an input the schema does not mark as
# aliased: E.ops.etb_block(c, r, w1, None, w2, None, torch.ones(2, 4, dtype=torch.float64), False)[2] is
# the mask, and torch.library.opcheck fails test_schema (README promises the ops pass opcheck).
def test_float_mask_of_centre_dtype_is_not_aliased_by_the_op():
    c, r, w1, b1, w2, b2 = random_block(2, 3, 4, 2, bias=False).args()
    mask = torch.ones(2, 4, dtype=torch.float64)
    s = E.ops.etb_block(c, r, w1, b1, w2, b2, mask, False)[2]
    assert s.data_ptr() != mask.data_ptr()
    torch.library.opcheck(E.ops.etb_block.default, (c, r, w1, b1, w2, b2, mask, False))


# Regression (fixed 2026-11-27): Through the alias above, an in-place update of a float mask (centre
# dtype) after etb_block breaks backward ('modified by an inplace operation'), while the same with a bool
# mask works: b = E.etb_block(c, r, w1, b1, w2, b2, mask=m64); m64.fill_(1); b.radius.sum().backward()
def test_updating_a_float_mask_after_forward_does_not_break_backward():
    blk = random_block(4, 6, 5, 3, eps=0.3, seed=2)
    leaves = [t.detach().clone().requires_grad_(True) for t in blk.args()]
    mask = (torch.rand(4, 5) < 0.5).double()
    b = E.etb_block(*leaves, mask=mask)
    mask.fill_(1.0)
    b.radius.sum().backward()


# Regression (fixed 2026-11-27): stacked backward (also the default for m < 32): a sample with an all-
# zero mask and an inf/NaN radius has forward radius 0 (README), but row_backward forms T = g * r *
# sign(0) = g * inf * 0 = NaN and adds A^T T (0 * NaN) into dW1/dW2, so the whole batch's weight gradients
# become NaN; gathered skips such samples and gives finite gradients. Repro: ETBK_CPU_STRATEGY=stacked;
# c=zeros(2,1); r=[[inf],[0.5]]; w1=w2=ones(1,1) (requires_grad); mask=[[0.],[1.]]; etb_block(c, r, w1,
# None, w2, mask=mask).radius.sum().backward() -> w1.grad = nan (gathered: 0.5)
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
@pytest.mark.parametrize("strategy", [
    "gathered",
    "stacked",
])
def test_inactive_sample_with_nonfinite_radius_keeps_weight_gradients_finite(strategy, value, strategy_env):
    strategy_env(strategy)
    c = torch.zeros(2, 1, dtype=torch.float64)
    r = torch.tensor([[value], [0.5]], dtype=torch.float64, requires_grad=True)
    w1 = torch.ones(1, 1, dtype=torch.float64, requires_grad=True)
    w2 = torch.ones(1, 1, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    b = E.etb_block(c, r, w1, None, w2, mask=mask)
    assert b.radius.flatten().tolist() == [0.0, 0.5]
    b.radius.sum().backward()
    # Sample 0's radius is the constant 0; sample 1's is |w2 w1| * 0.5.
    assert w1.grad.item() == 0.5 and w2.grad.item() == 0.5
    assert r.grad.flatten().tolist() == [0.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_number_radius_is_taken_in_the_compute_dtype(dtype):
    """A number radius with a float16/bfloat16 centre is taken in float32, the dtype the op computes
    in (it was rounded to the input dtype first: 1e-8 became 0 in float16, radius 0 where float16
    holds the true ~1e-4); numpy scalars are numbers too."""
    import numpy as np
    c = torch.tensor([[0.5, -0.25]])
    w1, w2 = torch.full((3, 2), 1e4), torch.ones(1, 3)
    want = E.etb_block(c, torch.full((1, 2), 1e-8), w1, None, w2).radius.to(dtype)
    got = E.etb_block(c.to(dtype), 1e-8, w1.to(dtype), None, w2.to(dtype)).radius
    assert got.dtype == dtype and float(got) > 0
    torch.testing.assert_close(got, want)
    for scalar in (np.float32(0.1), np.float64(0.1), np.int64(1)):
        b = E.etb_block(c, scalar, w1, None, w2)
        torch.testing.assert_close(b.radius, E.etb_block(c, float(scalar), w1, None, w2).radius)
