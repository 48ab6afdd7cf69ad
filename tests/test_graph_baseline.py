"""Every method's bounds on nn.Sequential models are what the chain parser gave before the traced
operator graph replaced it (recorded at commit 388346e by ``python tests/graph_baseline.py``)."""
import os

import pytest
import torch

import etbkernels
from graph_baseline import SETTINGS, models

RECORDED = torch.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "sequential_bounds.pt"))


@pytest.mark.parametrize("name, model, x", models(), ids=[m[0] for m in models()])
@pytest.mark.parametrize("i", range(len(SETTINGS)), ids=[str(s) for s in SETTINGS])
def test_sequential_bounds_unchanged(name, model, x, i):
    b = etbkernels.bounds(model, x, 0.05, **SETTINGS[i])
    want = RECORDED[f"{name}/{i}"]
    got = torch.stack([b.lower, b.upper])
    assert got.shape == want.shape
    scale = want.abs().max().item() + 1.0  # relative to the bounds' size; never 0
    assert (got - want).abs().max().item() <= 1e-12 * scale
