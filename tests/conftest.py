import os

import pytest
import torch

# Every test runs with poisoned kernel buffers (see csrc/poison.h): an unwritten element is NaN.
os.environ["ETBK_POISON"] = "1"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
