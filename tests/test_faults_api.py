"""API arguments (issue 21): expanded inputs refused up front by name, numpy scalars accepted for every
numeric argument, clip checked by name, integer labels of any width in margin_spec."""
import time

import numpy as np
import pytest
import torch
from torch import nn

import etbkernels as E
from etbkernels import _checks

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
# the expanded centre: 4 MiB of memory that reads as 2**31 floats (8 GiB)
HUGE = (2**11, 2**20)


def _mlp(n=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(n, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)).double()


def _refused_fast(fn, *needles, exc=ValueError):
    """``fn()`` raises ``exc`` with every needle in its one-line message, within a second (the
    expanded inputs were copied in full first and failed after up to 33 s in the allocator)."""
    t0 = time.perf_counter()
    with pytest.raises(exc) as e:
        fn()
    assert time.perf_counter() - t0 < 1.0
    text = str(e.value)
    assert "\n" not in text, text
    for n in needles:
        assert n in text, text


def test_expanded_centre_or_weight_in_block_ops_is_refused_by_name():
    center = torch.rand(1, HUGE[1]).expand(*HUGE)
    w1, b1, w2 = torch.rand(2, HUGE[1]), torch.rand(2), torch.rand(3, 2)
    for op in (E.etb_block, E.ibp_block):
        _refused_fast(lambda: op(center, 0.1, w1, b1, w2), f"{op.__name__}: center is an expanded tensor",
                      "would take 8.0 GiB", "center.contiguous()")
    # an expanded weight: w1 of 2**28 identical rows (w2 expanded too, so nothing here is large)
    w1 = torch.rand(1, 8).expand(2**28, 8)
    w2 = torch.rand(2, 1).expand(2, 2**28)
    _refused_fast(lambda: E.etb_block(torch.rand(3, 8), 0.1, w1, None, w2), "etb_block: w1 is an expanded tensor",
                  "8.0 GiB")
    _refused_fast(lambda: E.ibp_block(torch.rand(3, 8), torch.rand(1, 8).expand(2**28, 8), torch.rand(4, 8), None,
                                      torch.rand(2, 4)), "ibp_block: radius is an expanded tensor")


@pytest.mark.parametrize("method,mask", [("ibp", None), ("etb", "etb"), ("etb", "ibp"), ("crown-ibp", None)])
def test_expanded_x_eps_or_clip_in_bounds_is_refused_by_name(method, mask):
    kw = {"method": method} if mask is None else {"method": method, "mask": mask}
    model = nn.Sequential(nn.Linear(HUGE[1], 2), nn.ReLU(), nn.Linear(2, 2))
    x = torch.rand(1, HUGE[1]).expand(*HUGE)
    _refused_fast(lambda: E.bounds(model, x, 0.1, **kw), "bounds: x is an expanded tensor", "8.0 GiB")
    small = torch.rand(HUGE[0], 8)
    tiny = nn.Sequential(nn.Linear(8, 2), nn.ReLU(), nn.Linear(2, 2))
    wide = torch.rand(1, 1).expand(HUGE[0], 2**20 * 8)[:, :8]  # a view of an expanded tensor: fine, small
    assert E.bounds(tiny, small, wide, **kw).lower.shape == (HUGE[0], 2)
    eps = torch.rand(1, 1, 8).expand(2**26, HUGE[0], 8)
    _refused_fast(lambda: E.bounds(tiny, small, eps, **kw), "bounds: eps is an expanded tensor")
    _refused_fast(lambda: E.bounds(tiny, small, 0.1, clip=(eps, 1.0), **kw), "bounds: clip[0] (low) is an expanded tensor")


def test_small_expanded_inputs_still_work():
    model = _mlp()
    x = torch.rand(1, 3, dtype=F64)
    b = E.bounds(model, x.expand(4, 3), 0.1)
    assert torch.equal(b.lower, E.bounds(model, x.expand(4, 3).contiguous(), 0.1).lower)
    lin1, lin2 = nn.Linear(3, 4).double(), nn.Linear(4, 2).double()
    r = E.etb_block(x.expand(5, 3), 0.1, lin1.weight, lin1.bias, lin2.weight, lin2.bias)
    assert r.lower.shape == (5, 2)


def test_cap_is_adjustable(monkeypatch):
    monkeypatch.setattr(_checks, "MAX_EXPANDED_BYTES", 100)
    x = torch.rand(1, 3, dtype=F64).expand(5, 3)  # 120 bytes materialized
    _refused_fast(lambda: E.bounds(_mlp(), x, 0.1), "bounds: x is an expanded tensor", "more than the 100 bytes")


@pytest.mark.parametrize("eps", [np.float32(0.1), np.float64(0.1), np.float16(0.1)])
def test_numpy_eps_is_accepted_like_a_float(eps):
    """np.float32 eps was refused ("got float32") while np.float64 was accepted."""
    model, x = _mlp(), torch.rand(3, 3, dtype=F64)
    for method in ("ibp", "etb", "crown-ibp"):
        got = E.bounds(model, x, eps, method=method)
        want = E.bounds(model, x, float(eps), method=method)
        assert torch.equal(got.lower, want.lower) and torch.equal(got.upper, want.upper)


def test_numpy_integer_chunk_size_and_radius_are_accepted():
    """chunk_size=np.int64(2) was refused."""
    model, x = _mlp(), torch.rand(5, 3, dtype=F64)
    for method in ("etb", "crown-ibp", "crown-forward"):
        got = E.bounds(model, x, 0.1, method=method, chunk_size=np.int64(2))
        assert torch.allclose(got.lower, E.bounds(model, x, 0.1, method=method, chunk_size=2).lower, rtol=0, atol=1e-12)
    lin1, lin2 = nn.Linear(3, 4).double(), nn.Linear(4, 2).double()
    a = E.ibp_block(x, np.float32(0.25), lin1.weight, lin1.bias, lin2.weight, lin2.bias)
    assert torch.equal(a.upper, E.ibp_block(x, 0.25, lin1.weight, lin1.bias, lin2.weight, lin2.bias).upper)
    with pytest.raises(ValueError, match=r"chunk_size must be None or an int >= 1, got np.int64\(0\)"):
        E.bounds(model, x, 0.1, chunk_size=np.int64(0))


@pytest.mark.parametrize("clip,exc,needle", [
    ((1.0, 0.0), ValueError, "clip is reversed: low 1 > high 0"),                            # blamed x
    ((np.float32(0.7), np.float32(0.3)), ValueError, "clip is reversed: low 0.7 > high 0.3"),
    ((float("nan"), 1.0), ValueError, "clip[0] (low) is NaN"),                               # all-NaN bounds
    ((0.0, torch.tensor([1.0, float("nan"), 1.0], dtype=F64)), ValueError, "clip[1] (high) holds NaN"),
    ((None, 1.0), TypeError, "clip[0] (low) must be a number or a tensor, got NoneType"),  # did not name clip
    (("a", "b"), TypeError, "clip[0] (low) must be a number or a tensor, got str"),
    ((torch.zeros(4, dtype=F64), 1.0), ValueError, "clip[0] (low) of shape (4,) does not broadcast to x of shape (3, 3)"),
    ((0.0, torch.ones(3, dtype=torch.complex128)), TypeError, "clip[1] (high) must be a real tensor"),
    ((torch.zeros(3, dtype=F64, device="meta"), 1.0), ValueError, "clip[0] (low) is on meta but x is on cpu"),
])
def test_clip_is_checked_by_name(clip, exc, needle):
    model, x = _mlp(), torch.rand(3, 3, dtype=F64)
    for method in ("ibp", "etb"):
        with pytest.raises(exc) as e:
            E.bounds(model, x, 0.1, method=method, clip=clip)
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_clip_that_excludes_x_names_x_and_clip():
    model, x = _mlp(), torch.full((2, 3), 0.5, dtype=F64)
    x[1, 2] = 3.0
    with pytest.raises(ValueError, match=r"the clipped box is empty somewhere: x\[1, 2\] = 3 lies outside clip "
                                         r"\[0, 1\] by more than eps \(0.1\)"):
        E.bounds(model, x, 0.1, clip=(0.0, 1.0))
    low = torch.tensor([0.0, 0.6, 0.0], dtype=F64)
    with pytest.raises(ValueError, match=r"clip is reversed: low 0.6 > high 0.4 at x\[0, 1\]"):
        E.bounds(model, x, 0.1, clip=(low, torch.full((3,), 0.4, dtype=F64)))


def test_clip_of_numpy_scalars_or_per_feature_tensors_is_used():
    model, x = _mlp(), torch.rand(3, 3, dtype=F64)
    ref = E.bounds(model, x, 0.2, method="ibp", clip=(0.0, 1.0))
    for clip in ((np.float32(0), np.float64(1)), (np.int64(0), 1), (torch.zeros(3, dtype=F64), torch.ones(1, 3))):
        got = E.bounds(model, x, 0.2, method="ibp", clip=clip)
        assert torch.equal(got.lower, ref.lower) and torch.equal(got.upper, ref.upper)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.uint8])
def test_margin_spec_integer_labels_of_any_width(dtype):
    """int8/int16 labels raised IndexError; uint8 ones indexed as a boolean mask."""
    labels = torch.tensor([3, 0, 9, 3])
    want = E.margin_spec(labels, 10)
    assert torch.equal(E.margin_spec(labels.to(dtype), 10), want)
    assert torch.equal(E.margin_spec(labels.to(dtype), np.int64(10)), want)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\), got min 0, max 12"):
        E.margin_spec(torch.tensor([0, 12], dtype=dtype), 10)
