"""Loads the compiled ops and registers their fake (meta) kernels and autograd formulas.

The C++ side (csrc/ops.cpp) declares the schemas; csrc/cpu and csrc/cuda hold the kernels.
Registering fake kernels and autograd here, through torch.library, is what lets the ops run
under torch.compile(fullgraph=True) and pass torch.library.opcheck.
"""
from __future__ import annotations

import torch

from ._build.load import load_extension

load_extension()  # the compiled library: its TORCH_LIBRARY registrations declare the ops

ops = torch.ops.etbkernels


# ---------------------------------------------------------------- fake kernels (shapes only)
@torch.library.register_fake("etbkernels::etb_block")
def _etb_block_fake(center, radius, w1, b1, w2, b2, mask, output_center):
    N, m, h = center.shape[0], w2.shape[0], w1.shape[0]
    return center.new_empty(N, m), center.new_empty(N, m), center.new_empty(N, h)


@torch.library.register_fake("etbkernels::etb_block_backward")
def _etb_block_backward_fake(grad_center, grad_radius, center, radius, w1, b1, w2, s, output_center):
    return _grads_like(center, w1, w2)


@torch.library.register_fake("etbkernels::ibp_block")
def _ibp_block_fake(center, radius, w1, b1, w2, b2):
    N, m = center.shape[0], w2.shape[0]
    return center.new_empty(N, m), center.new_empty(N, m)


@torch.library.register_fake("etbkernels::ibp_block_backward")
def _ibp_block_backward_fake(grad_center, grad_radius, center, radius, w1, b1, w2):
    return _grads_like(center, w1, w2)


@torch.library.register_fake("etbkernels::tc_radius")
def _tc_radius_fake(a, bt, s, wcol, exact=False):
    return wcol.new_empty(s.shape[0], a.shape[0])


@torch.library.register_fake("etbkernels::tc_radius_grad")
def _tc_radius_grad_fake(a, bt, s, wcol, wrow, both_layouts=False):
    N, rows, cols = s.shape[0], a.shape[0], bt.shape[0]
    t2 = wcol.new_empty(N, cols, rows) if both_layouts else wcol.new_empty(0)
    return wcol.new_empty(N, rows), wcol.new_empty(N, rows, cols), t2


@torch.library.register_fake("etbkernels::tc_weight_grad")
def _tc_weight_grad_fake(a, t, s):
    return a.new_empty(a.shape[0], t.shape[1])


def _grads_like(center, w1, w2):
    h, m = w1.shape[0], w2.shape[0]
    return (
        torch.empty_like(center, memory_format=torch.contiguous_format),
        torch.empty_like(center, memory_format=torch.contiguous_format),
        w1.new_empty(w1.shape),
        w1.new_empty(h),
        w2.new_empty(w2.shape),
        w2.new_empty(m),
    )


# ---------------------------------------------------------------- autograd
def _etb_setup_context(ctx, inputs, output):
    center, radius, w1, b1, w2, b2, mask, output_center = inputs
    ctx.save_for_backward(center, radius, w1, b1, w2, output[2])
    ctx.has_b1, ctx.has_b2 = b1 is not None, b2 is not None
    ctx.output_center = output_center


def _etb_backward(ctx, grad_center, grad_radius, _grad_mask):
    center, radius, w1, b1, w2, s = ctx.saved_tensors
    dc, dr, dw1, db1, dw2, db2 = ops.etb_block_backward(
        grad_center, grad_radius, center, radius, w1, b1, w2, s, ctx.output_center
    )
    return dc, dr, dw1, db1 if ctx.has_b1 else None, dw2, db2 if ctx.has_b2 else None, None, None


def _ibp_setup_context(ctx, inputs, output):
    center, radius, w1, b1, w2, b2 = inputs
    ctx.save_for_backward(center, radius, w1, b1, w2)
    ctx.has_b1, ctx.has_b2 = b1 is not None, b2 is not None


def _ibp_backward(ctx, grad_center, grad_radius):
    center, radius, w1, b1, w2 = ctx.saved_tensors
    dc, dr, dw1, db1, dw2, db2 = ops.ibp_block_backward(grad_center, grad_radius, center, radius, w1, b1, w2)
    return dc, dr, dw1, db1 if ctx.has_b1 else None, dw2, db2 if ctx.has_b2 else None


torch.library.register_autograd("etbkernels::etb_block", _etb_backward, setup_context=_etb_setup_context)
torch.library.register_autograd("etbkernels::ibp_block", _ibp_backward, setup_context=_ibp_setup_context)


def has_cuda_kernels() -> bool:
    """True when this build of etbkernels registered CUDA kernels for its ops."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("etbkernels::etb_block", "CUDA")


def has_triton_kernels() -> bool:
    """True when the TF32 / BF16 CUDA paths run the Triton tensor-core kernels (etbkernels.triton_radius)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("etbkernels::tc_radius", "CUDA")


if has_cuda_kernels():  # a CUDA build: the TF32 / BF16 paths use Triton's wgmma kernels where installed
    from . import triton_radius

    triton_radius.register()
