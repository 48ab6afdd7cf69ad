"""A one-hidden-layer network equals the block ops (docs/math.md: "for two layers this is exactly the block")."""
import pytest
import torch
from torch import nn

from etbkernels import etb_block, ibp_block
from etbkernels.network import bounds, margin_spec

torch.manual_seed(1)


def _model():
    return nn.Sequential(nn.Linear(9, 13), nn.ReLU(), nn.Linear(13, 4)).double()


@pytest.mark.parametrize("center_at", ["linear", "output"])
@pytest.mark.parametrize("mask", ["etb", "ibp"])
def test_two_layers_equal_etb_block(center_at, mask):
    m = _model()
    x = torch.randn(6, 9, dtype=torch.float64)
    eps = torch.rand(9, dtype=torch.float64) * 0.3
    b, (first,) = bounds(m, x, eps, mask=mask, center_at=center_at, return_layers=True)
    ref = etb_block(x, eps, m[0].weight, m[0].bias, m[2].weight, m[2].bias, center_at=center_at)
    torch.testing.assert_close(b.center, ref.center)
    torch.testing.assert_close(b.radius, ref.radius)
    torch.testing.assert_close(first.center, m[0](x))
    torch.testing.assert_close(first.radius, eps.expand(6, 9) @ m[0].weight.abs().T)


def test_two_layers_spec_equals_etb_block_with_folded_weights():
    m = _model()
    x = torch.randn(5, 9, dtype=torch.float64)
    C = margin_spec(torch.tensor([1, 1, 1, 1, 1]), 4, dtype=torch.float64)
    b = bounds(m, x, 0.1, spec=C[0])
    ref = etb_block(x, 0.1, m[0].weight, m[0].bias, C[0] @ m[2].weight, C[0] @ m[2].bias, center_at="output")
    torch.testing.assert_close(b.radius, ref.radius)
    torch.testing.assert_close(b.center, ref.center)
    b3 = bounds(m, x, 0.1, spec=C)  # per-sample spec: general path, same numbers
    torch.testing.assert_close(b3.radius, ref.radius)


def test_two_layers_ibp_equals_ibp_block():
    m = _model()
    x = torch.randn(6, 9, dtype=torch.float64)
    b = bounds(m, x, 0.2, method="ibp")
    ref = ibp_block(x, 0.2, m[0].weight, m[0].bias, m[2].weight, m[2].bias)
    torch.testing.assert_close(b.center, ref.center)
    torch.testing.assert_close(b.radius, ref.radius)
