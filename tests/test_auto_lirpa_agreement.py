"""Our sound bounds against an independent implementation: auto_LiRPA 0.3 (Xu et al. 2020), where
it is installed (scripts/setup.sh installs it; bench/auto_lirpa_compat.py makes it import on
today's torch).

- Where auto_LiRPA 0.3 handles the layers, IBP, CROWN-IBP and full CROWN give the same intervals
  in float64 as ours, with and without a margin spec: an MLP with BatchNorm1d, the small CNN, and
  CNNs with an input normalization, BatchNorm2d, padding, stride, dilation, groups and AvgPool
  (full CROWN where auto_LiRPA runs it: not on groups, nor a normalization before a padded conv,
  where it raises). Our full CROWN also intersects each hidden interval with IBP's image of the
  one before; that can only tighten it (it does on one network here), and without it the two are
  equal.
- Where it does not, we check that the difference is its error, not ours: on an AvgPool2d whose
  stride differs from its kernel (CROWN-IBP and CROWN) and on a dilated convolution (full CROWN),
  PGD finds outputs outside auto_LiRPA's intervals and never outside ours. These are auto_LiRPA
  0.3's own: under torch 1.13.1, where it imports without shims, its bounds are bit-identical to
  those here (bench/auto_lirpa_old_torch.py, bench/results/auto_lirpa_old_torch.txt).

Our CROWN forward mode is not compared: auto_LiRPA's ``method="forward"`` takes every hidden
interval from forward linear bounds alone, while ours also intersects them with IBP's
(docs/networks.md), so the two differ by design."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bench import auto_lirpa_compat
from bench.auto_lirpa_old_torch import CASES as ESCAPED, EPS, SEEDS, case_inputs, dilated_net
from etbkernels.attacks import pgd_output_range
from etbkernels.network import bounds, crown_full, margin_spec, models
from test_network_reference import _bn_eval, patch_cnn, tiny_cnn, tiny_mlp

try:
    auto_lirpa_compat.load()
except ImportError as e:  # an optional comparator: say why it did not run
    pytest.skip(str(e), allow_module_level=True)

ALL = ("ibp", "crown-ibp", "crown")
THEIRS = {"ibp": "IBP", "crown-ibp": "CROWN-IBP", "crown": "CROWN"}


def conv_net(bn=True, normalize=False):
    """Padding, stride 2, AvgPool with stride = kernel, a 1x1 conv; optionally a BatchNorm2d and an
    input normalization in front (auto_LiRPA's full CROWN raises on it before a padded conv)."""
    from etbkernels.network.normalize import Normalize
    layers = [Normalize([0.4], [0.3])] if normalize else []
    layers.append(nn.Conv2d(1, 4, 3, padding=1))  # built in order: the random weights follow the layers
    if bn:
        layers.append(_bn_eval(nn.BatchNorm2d(4)))
    return nn.Sequential(*layers, nn.ReLU(),
                         nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(6, 4, 1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 5)).double().eval()


# (name, model, input shape, methods where auto_LiRPA 0.3 is right)
AGREE = [
    ("mlp_bn1d", tiny_mlp, (3, 12), ALL),
    ("small_cnn", lambda: models.small_cnn().double().eval(), (3, 1, 28, 28), ALL),
    ("conv_net", lambda: conv_net(bn=False), (3, 1, 12, 12), ALL),
    ("conv_net_bn", conv_net, (3, 1, 12, 12), ALL),  # here our IBP intersection tightens some CROWN bounds
    ("conv_net_bn_normalized", lambda: conv_net(normalize=True), (3, 1, 12, 12), ("ibp", "crown-ibp")),
    ("tiny_cnn_groups_dilation", tiny_cnn, (3, 2, 7, 7), ("ibp", "crown-ibp")),  # its CROWN raises on groups
    ("dilated", dilated_net, (2, 1, 14, 14), ("ibp", "crown-ibp")),
    ("patch_cnn_avgpool_stride1", patch_cnn, (2, 1, 14, 14), ("ibp",)),
]
CASES = [(name, make, shape, m) for name, make, shape, methods in AGREE for m in methods]


@pytest.mark.parametrize("name,make,shape,method", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
@pytest.mark.parametrize("spec_kind", [None, "margin"])
def test_same_bounds_as_auto_lirpa(name, make, shape, method, spec_kind, monkeypatch):
    torch.manual_seed(11)
    model = make()
    x = torch.rand(shape, dtype=torch.float64)
    out = model(x).shape[1]
    spec = None if spec_kind is None else margin_spec(torch.randint(0, out, (shape[0],)), out, dtype=torch.float64)
    lo, up = auto_lirpa_compat.lirpa_bounds(model, x, EPS, THEIRS[method], clip=(0.0, 1.0), C=spec)
    b = bounds(model, x, EPS, method=method, clip=(0.0, 1.0), spec=spec)
    tol = 1e-10 * max(1.0, up.abs().max().item())
    if method == "crown":
        # our full CROWN also intersects every hidden interval with IBP's image of the one before (sound,
        # free): at least as tight as auto_LiRPA's, and without the intersection its bounds exactly
        assert bool((b.lower >= lo - tol).all() and (b.upper <= up + tol).all())
        tighter = int(((b.lower > lo + tol) | (b.upper < up - tol)).sum())
        assert tighter > 0 if name == "conv_net_bn" else tighter == 0  # the network where it matters
        monkeypatch.setattr(crown_full, "intersect", lambda lo_, up_, *ibp: (lo_, up_))
        b = bounds(model, x, EPS, method=method, clip=(0.0, 1.0), spec=spec)
    torch.testing.assert_close(b.lower, lo, rtol=0, atol=tol)
    torch.testing.assert_close(b.upper, up, rtol=0, atol=tol)
    if method != "ibp":  # the relaxation matters here: tighter than IBP somewhere, or this compares little
        ibp = bounds(model, x, EPS, method="ibp", clip=(0.0, 1.0), spec=spec)
        assert bool(((b.upper - b.lower) < (ibp.upper - ibp.lower) - 1e-9).any())


@pytest.mark.parametrize("name,make,theirs,method", ESCAPED, ids=[f"{c[0]}-{c[3]}" for c in ESCAPED])
def test_where_auto_lirpa_differs_pgd_escapes_its_interval_not_ours(name, make, theirs, method):
    escaped_theirs = 0
    for seed in SEEDS:
        model, x = case_inputs(make, seed)
        lo, up = auto_lirpa_compat.lirpa_bounds(model, x, EPS, theirs, clip=(0.0, 1.0))
        b = bounds(model, x, EPS, method=method, clip=(0.0, 1.0))
        fmin, fmax = pgd_output_range(model, (x - EPS).clamp(0, 1), (x + EPS).clamp(0, 1), steps=100, restarts=2,
                                      seed=seed)
        assert not bool(((fmin < b.lower - 1e-12) | (fmax > b.upper + 1e-12)).any()), "PGD escaped OUR interval"
        escaped_theirs += int(((fmin < lo - 1e-12) | (fmax > up + 1e-12)).sum())
    assert escaped_theirs > 0, "auto_LiRPA's interval held here: update the docstring and move this case to AGREE"
