import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Property-based tests: a bounded, reproducible profile by default (CI); HYPOTHESIS_PROFILE=dev
# draws more examples with fresh randomness.
settings.register_profile("ci", max_examples=40, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=300)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors (tests/test_triton_radius.py).
# It must be set before anything imports triton: its own @jit helpers are built at import time.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Every test runs with poisoned kernel buffers (see csrc/poison.h): an unwritten element is NaN.
os.environ["ETBK_POISON"] = "1"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny networks: thread-pool overhead would dominate them,
    and on busy shared cores waiting for a second thread made them ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=["auto", "gathered", "stacked"])
def cpu_strategy(request, monkeypatch):
    """Runs a test under each CPU kernel strategy (csrc/cpu/strategy.h); "auto" picks by size."""
    if request.param == "auto":
        monkeypatch.delenv("ETBK_CPU_STRATEGY", raising=False)
    else:
        monkeypatch.setenv("ETBK_CPU_STRATEGY", request.param)
    return request.param
