"""The Triton tensor-core kernel (etbkernels/triton_radius.py): in Triton's interpreter on CPU
tensors where there is no GPU, compiled on CUDA tensors where there is one.

The kernel's tile logic (edges, masks, the column loop, the T layout, the "no active unit" rule)
is checked here on every machine against a float64 reference; tests/test_cuda_block.py checks the
compiled kernel on a GPU through etb_block. Small tiles (ETBK_TRITON_TILE) make small problems
span several row, column and K tiles.
"""
from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")
from etbkernels import triton_radius  # noqa: E402  (after the skip: needs triton)

# tests/conftest.py sets TRITON_INTERPRET=1 on machines without a GPU (before triton is imported).
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEV = "cpu" if INTERPRET else "cuda"
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("needs a GPU, or TRITON_INTERPRET=1 from the start", allow_module_level=True)


@pytest.fixture(scope="module")
def tr():
    return triton_radius


def make(N, rows, cols, h, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(rows, h, generator=g)
    bt = torch.randn(cols, h, generator=g)
    s = (torch.rand(N, h, generator=g) < 0.6).float()
    s[0] = 1.0  # one sample with every unit active
    if N > 2:
        s[1] = 0.0  # and one with none
    wcol = torch.rand(N, cols, generator=g) + 0.1
    wrow = torch.randn(N, rows, generator=g)
    return a.to(DEV, dtype), bt.to(DEV, dtype), s.to(DEV), wcol.to(DEV), wrow.to(DEV)


def reference(a, bt, s, wcol, wrow):
    """float64: out[b, row] = sum_col |P| wcol, T[b, row, col] = sign(P) wcol wrow, P = A diag(s_b) Bt^T."""
    a, bt, s, wcol, wrow = (t.double().cpu() for t in (a, bt, s, wcol, wrow))
    P = (a * s[:, None, :]) @ bt.t()  # (N, rows, cols)
    out = (P.abs() * wcol[:, None, :]).sum(-1)
    T = P.sign() * wcol[:, None, :] * wrow[:, :, None]
    return out, T, P


def check(tr, a, bt, s, wcol, wrow):
    out = tr.tc_radius(a, bt, s, wcol)
    out2, T = tr.tc_radius_grad(a, bt, s, wcol, wrow)
    ref, ref_T, P = reference(a, bt, s, wcol, wrow)
    assert out.dtype == torch.float32 and out.shape == ref.shape and T.shape == ref_T.shape
    assert torch.isfinite(out).all() and torch.isfinite(T).all()
    assert torch.equal(out, out2)
    h = a.shape[1]
    tol = 1e-5 * (1 + h) ** 0.5 * max(ref.abs().max().item(), 1.0)
    out, T = out.cpu(), T.cpu()
    assert (out.double() - ref).abs().max().item() <= tol
    # T: exact up to fp32 rounding of wcol * wrow, except where P is ~0 and its sign may differ.
    clear = P.abs() > 1e-4 * (1 + h) ** 0.5
    torch.testing.assert_close(T.double()[clear], ref_T[clear], rtol=1e-6, atol=1e-6)
    return out, T


# (N, rows, cols, h): ones, primes, one sample, tile edges of the small tiles below (16/32).
SMALL_TILE_SIZES = [(1, 1, 1, 1), (3, 5, 7, 13), (1, 16, 16, 16), (4, 17, 33, 31), (3, 31, 15, 47), (5, 40, 70, 33)]


@pytest.mark.parametrize("size", SMALL_TILE_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_small_tiles_match_float64(tr, size, monkeypatch):
    monkeypatch.setenv("ETBK_TRITON_TILE", "16,16,16,4,2")
    check(tr, *make(*size))


@pytest.mark.parametrize("size", [(2, 129, 67, 33), (3, 64, 200, 70), (1, 130, 129, 65)],
                         ids=lambda s: "x".join(map(str, s)))
def test_default_tiles_match_float64(tr, size):
    check(tr, *make(*size, seed=1))


def test_sample_without_active_units_gives_zero_even_with_infinite_weight(tr, monkeypatch):
    monkeypatch.setenv("ETBK_TRITON_TILE", "16,16,16,4,2")
    a, bt, s, wcol, wrow = make(3, 20, 18, 9)
    wcol[1, 3] = float("inf")  # sample 1 has no active unit: P = 0, its output must not depend on wcol
    out = tr.tc_radius(a, bt, s, wcol)
    assert (out[1] == 0).all() and torch.isfinite(out[0]).all()


def test_nan_weight_of_inactive_unit_does_not_leak(tr, monkeypatch):
    monkeypatch.setenv("ETBK_TRITON_TILE", "16,16,16,4,2")
    a, bt, s, wcol, wrow = make(3, 20, 18, 9)
    s[2] = 1.0
    s[2, 4] = 0.0
    a[:, 4] = float("nan")
    out = tr.tc_radius(a, bt, s, wcol)
    assert torch.isnan(out[0]).all()  # unit 4 is active in sample 0: NaN propagates
    assert torch.isfinite(out[2]).all()  # and inactive in sample 2: it must not leak (a select, not a multiply)
    keep = torch.ones(a.shape[1], dtype=torch.bool)
    keep[4] = False
    keep = keep.to(DEV)
    ref, _, _ = reference(a[:, keep], bt[:, keep], s[:, keep], wcol, torch.zeros(3, 20))
    torch.testing.assert_close(out[2].double().cpu(), ref[2], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(INTERPRET, reason="Triton 3.9's interpreter gets bf16 dots wrong (a plain 16x16 bf16 tl.dot "
                                       "is off by ~1e10 there); runs compiled on a GPU")
def test_bfloat16_operands(tr, monkeypatch):
    monkeypatch.setenv("ETBK_TRITON_TILE", "16,16,16,4,2")
    a, bt, s, wcol, wrow = make(4, 23, 19, 37, dtype=torch.bfloat16)
    out, _ = check(tr, a, bt, s, wcol, wrow)  # reference from the same bf16 values, in float64
    assert out.abs().sum() > 0


def test_empty_and_degenerate_shapes(tr):
    a, bt, s, wcol, wrow = make(3, 5, 4, 6)
    assert tr.tc_radius(a, bt, s[:0], wcol[:0]).shape == (0, 5)
    z = tr.tc_radius(a[:, :0].contiguous(), bt[:, :0].contiguous(), s[:, :0].contiguous(), wcol)
    assert z.shape == (3, 5) and (z == 0).all()
    out, T = tr.tc_radius_grad(a, bt[:0], s, wcol[:, :0].contiguous(), wrow)
    assert (out == 0).all() and T.shape == (3, 5, 0)


def test_bad_input_is_refused(tr, monkeypatch):
    a, bt, s, wcol, wrow = make(3, 5, 4, 6)
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        tr.tc_radius(a.double(), bt.double(), s, wcol)
    with pytest.raises(ValueError, match="shapes do not match"):
        tr.tc_radius(a, bt[:, :5], s, wcol)
    with pytest.raises(ValueError, match="contiguous"):
        tr.tc_radius(a.t().contiguous().t(), bt, s, wcol)
    with pytest.raises(ValueError, match="wrow"):
        tr.tc_radius_grad(a, bt, s, wcol, wrow[:, :4])
    with pytest.raises(TypeError, match="wcol must be float32"):
        tr.tc_radius(a, bt, s, wcol.double())
    monkeypatch.setenv("ETBK_TRITON_TILE", "16,16")
    with pytest.raises(ValueError, match="5 integers"):
        tr.tc_radius(a, bt, s, wcol)
    monkeypatch.setenv("ETBK_TRITON_TILE", "24,16,16,4,2")
    with pytest.raises(ValueError, match="power of two"):
        tr.tc_radius(a, bt, s, wcol)


def test_default_tiles(tr):
    mod = tr
    assert mod.default_tile(1024, 784, False) == (128, 128, 32, 8, 3)
    assert mod.default_tile(1024, 784, True)[2] == 64
    assert mod.default_tile(10, 784, False)[:2] == (64, 128)
