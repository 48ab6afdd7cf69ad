"""etbkernels: Expected Tight Bounds (ETB) and IBP interval bounds for ReLU networks.

ETB bounds are *expected* bounds (tight, not certificates); IBP and the CROWN bounds are sound. See README.md.
"""
try:
    import torch  # noqa: F401
except ImportError:  # one line naming what to install, instead of a failure deep in the package
    raise ImportError("etbkernels needs PyTorch (2.11 to 2.14): pip install torch") from None

from . import reference  # noqa: E402
from ._ops import has_cuda_kernels, has_triton_kernels, ops
from .block import etb_block, ibp_block
from .bounds_type import Bounds
from .network import Normalize, bounds, margin_spec
from .nn import BoundedModel

__version__ = "0.1.0"
__all__ = ["Bounds", "etb_block", "ibp_block", "bounds", "margin_spec", "Normalize", "BoundedModel", "reference", "ops", "has_cuda_kernels", "has_triton_kernels", "__version__"]
