"""Bad input raises a clear Python exception naming what is wrong; nothing crashes."""
import pytest
import torch

import etbkernels as E
from etbkernels.testing import random_block

BLK = random_block(4, 6, 5, 3)
C, R_, W1, B1, W2, B2 = BLK.args()


@pytest.mark.parametrize("fn", [E.etb_block, E.ibp_block])
@pytest.mark.parametrize(
    "override,exc,pattern",
    [
        ({"w1": torch.randn(5, 7, dtype=torch.float64)}, ValueError, r"w1 must be \(h, n\).*\[5, 7\]"),
        ({"w2": torch.randn(3, 4, dtype=torch.float64)}, ValueError, r"w2 must be \(m, h\).*\[3, 4\]"),
        ({"b1": torch.randn(4, dtype=torch.float64)}, ValueError, r"b1 must have shape \(5,\)"),
        ({"b2": torch.randn(3, 1, dtype=torch.float64)}, ValueError, r"b2 must have shape \(3,\)"),
        ({"w1": torch.randn(5, 6, 1, dtype=torch.float64)}, ValueError, r"w1 must be"),
        ({"radius": torch.rand(4, 5, dtype=torch.float64)}, ValueError, r"does not broadcast"),
        ({"radius": -torch.rand(4, 6, dtype=torch.float64)}, ValueError, r"radius must be >= 0"),
        ({"radius": -0.1}, ValueError, r"radius must be >= 0"),
        ({"radius": "0.1"}, TypeError, r"radius must be a tensor or a number"),
        ({"center": torch.randn(2, 4, 6, dtype=torch.float64)}, ValueError, r"center must be \(n,\) or \(N, n\)"),
        ({"center": torch.ones(4, 6, dtype=torch.int64)}, TypeError, r"floating-point"),
        ({"center": torch.randn(4, 6, dtype=torch.complex64)}, TypeError, r"floating-point"),
        ({"center": [[0.0] * 6] * 4}, TypeError, r"center must be a torch.Tensor"),
        ({"w1": W1.float()}, TypeError, r"same dtype.*w1 is torch.float32"),
        ({"b2": B2.float()}, TypeError, r"same dtype.*b2"),
        ({"radius": R_.float()}, TypeError, r"same dtype.*radius"),
        ({"w2": W2.numpy()}, TypeError, r"w2 must be a torch.Tensor"),
        ({"w1": W1.to("meta")}, ValueError, r"same device.*w1 is on meta"),
        ({"w1": W1.to_sparse()}, TypeError, r"w1 must be a dense \(strided\) tensor, got layout torch.sparse_coo"),
        ({"radius": R_.to_sparse()}, TypeError, r"radius must be a dense \(strided\) tensor"),
        ({"center": C.to_sparse_csr()}, TypeError, r"center must be a dense \(strided\) tensor"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_inputs(fn, override, exc, pattern):
    args = {"center": C, "radius": R_, "w1": W1, "b1": B1, "w2": W2, "b2": B2} | override
    with pytest.raises(exc, match=pattern):
        fn(args["center"], args["radius"], args["w1"], args["b1"], args["w2"], args["b2"])


@pytest.mark.parametrize(
    "mask,exc,pattern",
    [
        (torch.ones(4, 4, dtype=torch.bool), ValueError, r"mask must be \(N, h\) = \(4, 5\)"),
        (torch.ones(5, dtype=torch.bool), ValueError, r"mask must be \(N, h\)"),
        (torch.full((4, 5), 0.5, dtype=torch.float64), ValueError, r"only 0 and 1"),
        (torch.full((4, 5), float("nan"), dtype=torch.float64), ValueError, r"only 0 and 1"),
        (torch.ones(4, 5, dtype=torch.complex64), TypeError, r"bool or real"),
        (torch.ones(4, 5).to("meta"), ValueError, r"mask must be on cpu"),
        ([[1] * 5] * 4, TypeError, r"mask must be a torch.Tensor"),
        (torch.ones(4, 5, dtype=torch.float64).to_sparse(), TypeError, r"mask must be a dense \(strided\) tensor"),
    ],
)
def test_bad_masks(mask, exc, pattern):
    with pytest.raises(exc, match=pattern):
        E.etb_block(C, R_, W1, B1, W2, B2, mask=mask)


def test_bad_center_at():
    with pytest.raises(ValueError, match="center_at must be one of"):
        E.etb_block(C, R_, W1, B1, W2, B2, center_at="middle")


def test_direct_op_calls_are_checked_too():
    """The compiled ops validate on their own (no Python wrapper in front)."""
    with pytest.raises(ValueError, match=r"radius must have the shape of center"):
        E.ops.etb_block(C, R_[:, :3], W1, B1, W2, B2, None, False)
    with pytest.raises(TypeError, match=r"float32 or float64"):
        E.ops.ibp_block(C.half(), R_.half(), W1.half(), None, W2.half(), None)
    with pytest.raises(ValueError, match=r"grad_radius must be \(4, 3\)"):
        E.ops.etb_block_backward(torch.ones(4, 3, dtype=torch.float64), torch.ones(4, 2, dtype=torch.float64),
                                 C, R_, W1, B1, W2, torch.ones(4, 5, dtype=torch.float64), False)


def test_value_checks_are_reported_in_order_with_the_offending_value():
    """Value checks are read once, after the op's work is queued (no wait for a GPU in the middle of
    the op); they still raise the first failing check's message, with the data it names."""
    r = R_.clone()
    r[2, 3] = -0.25
    with pytest.raises(ValueError, match=r"radius must be >= 0.*min radius = -0\.25"):
        E.etb_block(C, r, W1, B1, W2, B2, mask=torch.full((4, 5), 0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"only 0 and 1"):  # the radius is fine: the mask's check fails
        E.etb_block(C, R_, W1, B1, W2, B2, mask=torch.full((4, 5), 0.5, dtype=torch.float64))
    ok = E.etb_block(C, R_, W1, B1, W2, B2, mask=torch.ones(4, 5, dtype=torch.float64))  # 0/1 values pass
    assert bool((ok.upper >= ok.lower).all())
