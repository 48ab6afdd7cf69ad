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


# ETBK_TEST_DEVICE picks the device of the tests that take the ``device`` fixture (the network fuzz
# and graph tests): "cpu" (default), "cuda", or both ("cpu,cuda"). A CUDA case skips itself where
# there is no GPU. The id of each case ends with its device, so ``-k cuda`` selects the CUDA ones.
# (tests/test_cuda_block.py reads the same variable on its own, with "cuda" as its default.)
TEST_DEVICES = [d.strip() for d in os.environ.get("ETBK_TEST_DEVICE", "cpu").split(",") if d.strip()] or ["cpu"]


@pytest.fixture(params=TEST_DEVICES)
def device(request):
    """The device a test runs the library on (ETBK_TEST_DEVICE); a test that parametrizes
    ``device`` itself (etbkernels.testing.devices()) overrides this fixture."""
    if request.param.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("ETBK_TEST_DEVICE=cuda: no CUDA device here")
    return request.param
