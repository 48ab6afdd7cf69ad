"""Graph models against auto_LiRPA 0.3 (where installed; see tests/test_auto_lirpa_agreement.py).

- A residual network: IBP and CROWN-IBP agree within 1e-9 in float64; our full CROWN lies inside
  theirs (it also intersects every hidden interval with IBP's, which tightens it here by ~1e-3 relative).
- A max-pool network: IBP agrees within 1e-9 in float64. auto_LiRPA 0.3's CROWN-IBP and CROWN raise
  on it in float64 ("scatter(): Expected self.dtype to be equal to src.dtype", its max-pool
  relaxation builds a float32 tensor); in float32 both give the same width as ours on this network,
  and neither interval is escaped by sampled points. Our CROWN-IBP on max-pool is also checked for
  soundness by tests/test_network_dag.py."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bench import auto_lirpa_compat
from etbkernels.network import bounds
from etbkernels.network.models import ResidualBlock

try:
    auto_lirpa_compat.load()
except ImportError as e:
    pytest.skip(str(e), allow_module_level=True)

EPS = 0.05


def residual():
    return nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU(), ResidualBlock(4), ResidualBlock(4), nn.Flatten(),
                         nn.Linear(4 * 5 * 5, 5))


def maxpool():
    return nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 3, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(3 * 3 * 3, 5))


@pytest.mark.parametrize("make, methods", [(residual, ("ibp", "crown-ibp", "crown")), (maxpool, ("ibp",))])
def test_same_bounds_as_auto_lirpa_in_float64(make, methods):
    torch.manual_seed(3)
    model = make().double().eval()
    x = torch.rand(3, 1, 10, 10, dtype=torch.float64)
    for method in methods:
        lo, up = auto_lirpa_compat.lirpa_bounds(model, x, EPS, {"ibp": "IBP", "crown-ibp": "CROWN-IBP",
                                                                "crown": "CROWN"}[method])
        b = bounds(model, x, EPS, method=method)
        tol = 1e-9 * max(1.0, up.abs().max().item())
        if method == "crown":  # ours also intersects every hidden interval with IBP's: at least as tight
            assert bool((b.lower >= lo - tol).all()) and bool((b.upper <= up + tol).all())
            continue
        assert (b.lower - lo).abs().max().item() <= tol, method
        assert (b.upper - up).abs().max().item() <= tol, method


def test_max_pool_crown_ibp_width_against_auto_lirpa():
    torch.manual_seed(3)
    model = maxpool().eval()
    x = torch.rand(3, 1, 10, 10)
    with pytest.raises(RuntimeError, match="scatter"):  # auto_LiRPA 0.3 in float64 (see the docstring)
        auto_lirpa_compat.lirpa_bounds(model.double(), x.double(), EPS, "CROWN-IBP")
    model = model.float()
    lo, up = auto_lirpa_compat.lirpa_bounds(model, x, EPS, "CROWN-IBP")
    b = bounds(model, x, EPS, method="crown-ibp")
    ours, theirs = (b.upper - b.lower).mean().item(), (up - lo).mean().item()
    print(f"max-pool CROWN-IBP mean width: ours {ours:.6g}, auto_LiRPA 0.3 {theirs:.6g}")
    assert ours <= theirs * (1 + 1e-5)
    g = torch.Generator().manual_seed(0)
    pts = x + EPS * (torch.rand((4000,) + tuple(x.shape), generator=g) * 2 - 1).sign()
    with torch.no_grad():
        y = model(pts.reshape(-1, 1, 10, 10)).reshape(4000, 3, 5)
    assert bool(((y >= b.lower - 1e-5) & (y <= b.upper + 1e-5)).all())
