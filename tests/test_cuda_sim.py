"""Runs the host-side emulation of the CUDA kernels' index math (tests/sim_radius_kernels.py).

No GPU needed: it checks that the loaders, fragment layouts, tile edges, epilogue and
reductions of csrc/cuda/etb_radius_kernels.cu (as transcribed in the emulation) compute the
ETB radius, and that the chunked backward of csrc/cuda/etb_cuda.cpp gives autograd's gradients.
Keep the emulation in step with the .cu when the kernels change.
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sim_radius_kernels as sim  # noqa: E402

pytestmark = pytest.mark.slow

FWD_CASES = [
    (3, 130, 37, 131, "tf32", 1, np.float32),
    (2, 132, 40, 132, "tf32", 4, np.float32),
    (2, 133, 75, 5, "tf32", 1, np.float32),    # 2 x 2 pipeline steps: every slot of the 3 stages refilled
    (3, 130, 37, 131, "bf16", 1, np.float32),
    (2, 136, 75, 8, "bf16", 4, np.float32),
    (2, 132, 33, 4, "bf16", 4, np.float32),
    (3, 130, 19, 131, "ffma", 1, np.float32),
    (2, 132, 17, 136, "ffma", 4, np.float32),
    (3, 66, 17, 67, "ffma", 1, np.float64),
    (2, 66, 20, 66, "ffma", 2, np.float64),
]


@pytest.mark.parametrize("case", FWD_CASES, ids=lambda c: f"{c[4]}-V{c[5]}-{np.dtype(c[6]).name}")
def test_forward_kernel_emulation(case):
    N, n, h, m, path, V, dtype = case
    assert sim.run_case(N, n, h, m, path, V, dtype=dtype)


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_chunked_backward_emulation(chunk):
    assert sim.sim_backward(7, 11, 9, 5, chunk=chunk)
