import os

import pytest
import torch

# Every test runs with poisoned kernel buffers (see csrc/poison.h): an unwritten element is NaN.
os.environ["ETBK_POISON"] = "1"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=["auto", "gathered", "stacked"])
def cpu_strategy(request, monkeypatch):
    """Runs a test under each CPU kernel strategy (csrc/cpu/strategy.h); "auto" picks by size."""
    if request.param == "auto":
        monkeypatch.delenv("ETBK_CPU_STRATEGY", raising=False)
    else:
        monkeypatch.setenv("ETBK_CPU_STRATEGY", request.param)
    return request.param
