"""The Triton tensor-core kernel (etbkernels/triton_radius.py): in Triton's interpreter on CPU
tensors where there is no GPU, compiled on CUDA tensors where there is one.

The kernel's tile logic (edges, masks, the column loop, the T layout, the "no active unit" rule)
is checked here on every machine against a float64 reference; tests/test_cuda_block.py checks the
compiled kernel on a GPU through etb_block. Small tiles (ETBK_TRITON_TILE) make small problems
span several row, column and K tiles.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("triton")
from etbkernels import triton_radius as tr  # noqa: E402  (after the skip: needs triton)
from etbkernels.testing import round_tf32  # noqa: E402

# tests/conftest.py sets TRITON_INTERPRET=1 on machines without a GPU (before triton is imported).
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEV = "cpu" if INTERPRET else "cuda"
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("needs a GPU, or TRITON_INTERPRET=1 from the start", allow_module_level=True)


def make(N, rows, cols, h, seed=0, dtype=torch.float32):
    """Operands as the C++ side passes them: TF32-rounded float32 (so the GPU's TF32 products are
    exact and only fp32 accumulation differs from float64) or bfloat16."""
    g = torch.Generator().manual_seed(seed)
    a = round_tf32(torch.randn(rows, h, generator=g))
    bt = round_tf32(torch.randn(cols, h, generator=g))
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


def check(a, bt, s, wcol, wrow):
    out = tr.tc_radius(a, bt, s, wcol)
    out2, T, empty = tr.tc_radius_grad(a, bt, s, wcol, wrow)
    out3, T3, T2 = tr.tc_radius_grad(a, bt, s, wcol, wrow, both_layouts=True)
    ref, ref_T, P = reference(a, bt, s, wcol, wrow)
    assert out.dtype == torch.float32 and out.shape == ref.shape and T.shape == ref_T.shape
    assert torch.isfinite(out).all() and torch.isfinite(T).all()
    assert torch.equal(out, out2) and torch.equal(out, out3) and torch.equal(T, T3)
    # the second layout is the same numbers, bit for bit, as the transposed copy it replaces
    assert empty.numel() == 0 and torch.equal(T2, T.transpose(1, 2).contiguous())
    h = a.shape[1]
    tol = 1e-5 * (1 + h) ** 0.5 * max(ref.abs().max().item(), 1.0)
    out, T = out.cpu(), T.cpu()
    assert (out.double() - ref).abs().max().item() <= tol
    # T: sign(P) wcol wrow rounded to TF32 (relative 2^-11), except where P is ~0 and its sign may differ.
    clear = P.abs() > 1e-4 * (1 + h) ** 0.5
    torch.testing.assert_close(T.double()[clear], ref_T[clear], rtol=2.0 ** -11, atol=1e-7)
    assert torch.equal(T, round_tf32(T)), "T is not rounded to TF32"
    return out, T


# (N, rows, cols, h): ones, primes, one sample, tile edges of the small tiles below (16/32).
SMALL_TILE_SIZES = [(1, 1, 1, 1), (3, 5, 7, 13), (1, 16, 16, 16), (4, 17, 33, 31), (3, 31, 15, 47), (5, 40, 70, 33)]


@pytest.mark.parametrize("size", SMALL_TILE_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_small_tiles_match_float64(size, monkeypatch):
    monkeypatch.setenv("ETBK_TRITON_TILE", "16,16,16,4,2")
    check(*make(*size))


@pytest.mark.parametrize("size", [(2, 129, 67, 33), (3, 64, 200, 70), (1, 130, 129, 65)],
                         ids=lambda s: "x".join(map(str, s)))
def test_default_tiles_match_float64(size):
    check(*make(*size, seed=1))


@pytest.mark.parametrize("tile", ["16,16,16,4,2", None])
def test_exact_fp32_products(tile, monkeypatch):
    """exact=True (the ETBK_CUDA_FFMA=triton forward) multiplies unrounded fp32 operands in fp32: it
    matches float64 to fp32 accumulation error, where TF32 products of the same operands cannot
    (this is what tells the two apart on a GPU; the interpreter computes every dot in fp32)."""
    if tile:
        monkeypatch.setenv("ETBK_TRITON_TILE", tile)
    g = torch.Generator().manual_seed(7)
    N, rows, cols, h = 3, 37, 45, 70
    a, bt = torch.randn(rows, h, generator=g), torch.randn(cols, h, generator=g)  # not TF32-rounded
    s = (torch.rand(N, h, generator=g) < 0.6).float()
    wcol = torch.rand(N, cols, generator=g) + 0.1
    out = tr.tc_radius(a.to(DEV), bt.to(DEV), s.to(DEV), wcol.to(DEV), exact=True).cpu()
    ref = reference(a, bt, s, wcol, torch.zeros(N, rows))[0]
    err = ((out.double() - ref).abs() / ref.abs()).max().item()
    assert err <= 2e-6 * (1 + h) ** 0.5, err
    tf32 = reference(round_tf32(a), round_tf32(bt), s, wcol, torch.zeros(N, rows))[0]
    assert ((tf32 - ref).abs() / ref.abs()).max().item() > 10 * err  # a TF32 kernel would fail the check above


def test_sample_without_active_units_gives_zero_even_with_infinite_weight(monkeypatch):
    monkeypatch.setenv("ETBK_TRITON_TILE", "16,16,16,4,2")
    a, bt, s, wcol, wrow = make(3, 20, 18, 9)
    wcol[1, 3] = float("inf")  # sample 1 has no active unit: P = 0, its output must not depend on wcol
    out = tr.tc_radius(a, bt, s, wcol)
    assert (out[1] == 0).all() and torch.isfinite(out[0]).all()


def test_nan_weight_of_inactive_unit_does_not_leak(monkeypatch):
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
def test_bfloat16_operands(monkeypatch):
    monkeypatch.setenv("ETBK_TRITON_TILE", "16,16,16,4,2")
    a, bt, s, wcol, wrow = make(4, 23, 19, 37, dtype=torch.bfloat16)
    out, _ = check(a, bt, s, wcol, wrow)  # reference from the same bf16 values, in float64
    assert out.abs().sum() > 0


def test_empty_and_degenerate_shapes():
    a, bt, s, wcol, wrow = make(3, 5, 4, 6)
    assert tr.tc_radius(a, bt, s[:0], wcol[:0]).shape == (0, 5)
    z = tr.tc_radius(a[:, :0].contiguous(), bt[:, :0].contiguous(), s[:, :0].contiguous(), wcol)
    assert z.shape == (3, 5) and (z == 0).all()
    out, T, T2 = tr.tc_radius_grad(a, bt[:0], s, wcol[:, :0].contiguous(), wrow, both_layouts=True)
    assert (out == 0).all() and T.shape == (3, 5, 0) and T2.shape == (3, 0, 5)


def test_bad_input_is_refused(monkeypatch):
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
    with pytest.raises(TypeError, match=r"ieee products \(exact=True\) need float32"):
        tr.tc_radius(a.bfloat16(), bt.bfloat16(), s, wcol, exact=True)
    monkeypatch.setenv("ETBK_TRITON_TILE", "16,16")
    with pytest.raises(ValueError, match="5 integers"):
        tr.tc_radius(a, bt, s, wcol)
    monkeypatch.setenv("ETBK_TRITON_TILE", "24,16,16,4,2")
    with pytest.raises(ValueError, match="power of two"):
        tr.tc_radius(a, bt, s, wcol)


def test_default_tiles():
    assert tr.default_tile(1024, 784, False) == (128, 256, 32, 8, 3)
    assert tr.default_tile(1024, 100, False) == (128, 128, 32, 8, 3)
    assert tr.default_tile(1024, 784, True)[2] == 64
    assert tr.default_tile(10, 784, False)[:2] == (64, 256)


# ---------------------------------------------------------------- the weight-gradient kernel
def weight_grad_reference(a, t, s):
    """float64: out[i, x] = sum_b [s[b, i] != 0] sum_t A[i, t] T[b, x, t]."""
    a, t, s = (x.double().cpu() for x in (a, t, s))
    return ((a @ t.transpose(1, 2)) * (s != 0)[:, :, None]).sum(0)


def make_wgrad(C, x, tdim, h, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = round_tf32(torch.randn(C, x, tdim, generator=g))
    s = (torch.rand(C, h, generator=g) < 0.6).float()
    if C > 1:
        s[1] = 0.0
    a = round_tf32(torch.randn(h, tdim, generator=g))
    return a.to(DEV), t.to(DEV), s.to(DEV)


def check_wgrad(a, t, s):
    out = tr.tc_weight_grad(a, t, s)
    ref = weight_grad_reference(a, t, s)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    C, _, tdim = t.shape
    tol = 1e-5 * (1 + C * tdim) ** 0.5 * max(ref.abs().max().item(), 1.0)
    assert (out.double().cpu() - ref).abs().max().item() <= tol
    return out


# (C, xdim, tdim, h): ones, primes, tile edges of 16, more samples than splits
@pytest.mark.parametrize("size", [(1, 1, 1, 1), (3, 5, 7, 13), (7, 17, 33, 20), (2, 40, 31, 47), (20, 9, 11, 5)],
                         ids=lambda s: "x".join(map(str, s)))
def test_weight_grad_small_tiles_match_float64(size, monkeypatch):
    monkeypatch.setenv("ETBK_TRITON_WGRAD_TILE", "16,16,16,4,2")
    check_wgrad(*make_wgrad(*size))


@pytest.mark.parametrize("policy", ["legacy", "waves"])
def test_weight_grad_default_tiles_and_splits(policy, monkeypatch):
    monkeypatch.setenv("ETBK_TRITON_SPLITS", policy)
    seen = []
    splits = tr.weight_grad_splits
    monkeypatch.setattr(tr, "weight_grad_splits", lambda *a, **k: seen.append(k.get("slots")) or splits(*a, **k))
    a, t, s = make_wgrad(9, 130, 70, 150, seed=2)
    out = check_wgrad(a, t, s)
    assert torch.equal(out, tr.tc_weight_grad(a, t, s))  # deterministic
    # the policy reached the split count: slots only for "waves" (an H100's 132 in the interpreter)
    assert seen == ([None, None] if policy == "legacy" else [132 if DEV == "cpu" else seen[0]] * 2) and seen[0] != 0


def test_weight_grad_split_policies():
    # legacy: about 264 programs, at most one split per sample
    assert tr.weight_grad_splits(tiles=4, C=9) == 9 and tr.weight_grad_splits(tiles=1000, C=9) == 1
    assert tr.weight_grad_splits(tiles=96, C=64) == 3  # the H100 benchmark's dW1: 288 programs
    # waves: 96 tiles x 4 splits = 384 programs of 16 samples in 3 waves of 132, not 3 splits of 22
    assert tr.weight_grad_splits(tiles=96, C=64, slots=132) == 4
    assert tr.weight_grad_splits(tiles=32, C=64, slots=132) == 4  # dW2^T: 1 wave of 16 (legacy: 2 waves of 8)
    cost = lambda tiles, C, sp, slots: -(-tiles * -(-C // -(-C // sp)) // slots) * -(-C // sp)  # noqa: E731
    for tiles, C, slots in [(96, 64, 132), (32, 66, 132), (7, 5, 264), (1, 1, 132), (500, 3, 132), (12, 1000, 80)]:
        sp = tr.weight_grad_splits(tiles, C, slots=slots)
        assert 1 <= sp <= C
        # no split count within the searched range (at most ~8 waves: each split adds an (h, xdim)
        # partial sum) does better in waves x samples per program, and none at all does much better
        bound = min(C, -(-8 * slots // tiles))
        assert cost(tiles, C, sp, slots) == min(cost(tiles, C, k, slots) for k in range(1, bound + 1))
        assert cost(tiles, C, sp, slots) <= 1.1 * min(cost(tiles, C, k, slots) for k in range(1, C + 1))
    # resident CTAs per SM, from an H100's limits (228 KB shared memory, 64K registers, 2048 threads)
    h100 = SimpleNamespace(shared_memory_per_multiprocessor=233472, regs_per_multiprocessor=65536,
                           max_threads_per_multi_processor=2048)
    assert tr.resident_ctas(h100, tr.weight_grad_tile()) == 1  # 147 KB of pipeline buffers
    assert tr.resident_ctas(h100, (128, 128, 32, 8, 3)) == 2
    assert tr.resident_ctas(h100, (64, 64, 16, 4, 2)) == 5  # registers: 96 a thread, 128 threads
    assert tr.resident_ctas(SimpleNamespace(), (128, 128, 32, 8, 3)) == 1  # an older torch without the fields
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ETBK_TRITON_SPLITS", "fastest")
        with pytest.raises(ValueError, match="legacy or waves"):
            tr.tc_weight_grad(*make_wgrad(2, 3, 4, 5))


def test_weight_grad_gives_the_block_gradients(monkeypatch):
    """dW1 = wg(W2^T, T) and dW2^T = wg(W1, T^T), as the CUDA backward calls them, equal autograd's."""
    monkeypatch.setenv("ETBK_TRITON_WGRAD_TILE", "16,16,16,4,2")
    g = torch.Generator().manual_seed(5)
    N, n, h, m = 4, 9, 7, 6
    w1, w2 = round_tf32(torch.randn(h, n, generator=g)), round_tf32(torch.randn(m, h, generator=g))
    s = (torch.rand(N, h, generator=g) < 0.7).float()
    r, G = torch.rand(N, n, generator=g), torch.randn(N, m, generator=g)
    w1d, w2d = w1.double().requires_grad_(), w2.double().requires_grad_()
    P = (w2d * s.double()[:, None, :]) @ w1d  # (N, m, n)
    ((P.abs() * r.double()[:, None, :]).sum(-1) * G.double()).sum().backward()
    T = round_tf32((P.detach().sign() * G.double()[:, :, None] * r.double()[:, None, :]).float())  # T[b, j, k]
    Tk = T.transpose(1, 2).contiguous()  # T[b, k, j], the layout tc_radius_grad writes
    dw1 = tr.tc_weight_grad(w2.t().contiguous().to(DEV), Tk.to(DEV), s.to(DEV))
    dw2t = tr.tc_weight_grad(w1.to(DEV), T.to(DEV), s.to(DEV))
    # T is rounded to TF32 (relative 2^-11 per term): tolerance of a few ulps of TF32 on the largest grad
    for got, want in ((dw1.double().cpu(), w1d.grad), (dw2t.double().cpu().t(), w2d.grad)):
        assert (got - want).abs().max().item() <= 2.0 ** -8 * want.abs().max().item()


def test_weight_grad_masked_nan_does_not_leak(monkeypatch):
    monkeypatch.setenv("ETBK_TRITON_WGRAD_TILE", "16,16,16,4,2")
    a, t, s = make_wgrad(3, 6, 5, 4)
    s[:, 2] = 0.0  # unit 2 inactive in every sample: its NaN weights must not reach any output
    a[2, 1] = float("nan")
    out = tr.tc_weight_grad(a, t, s)
    assert (out[2] == 0).all() and torch.isfinite(out).all()
    s[0, 2] = 1.0
    assert torch.isnan(tr.tc_weight_grad(a, t, s)[2]).any()


def test_weight_grad_bad_input():
    a, t, s = make_wgrad(3, 6, 5, 4)
    with pytest.raises(ValueError, match="shapes do not match"):
        tr.tc_weight_grad(a[:, :4].contiguous(), t, s)
    with pytest.raises(TypeError, match="float32"):
        tr.tc_weight_grad(a.double(), t, s)
    with pytest.raises(ValueError, match="contiguous"):
        tr.tc_weight_grad(a, t.transpose(1, 2).contiguous().transpose(1, 2), s)
    assert tr.tc_weight_grad(a, t[:0], s[:0]).shape == (4, 6)
