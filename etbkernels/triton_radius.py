"""Tensor-core ETB radius kernels in Triton: the TF32 / BF16 paths of the CUDA build.

Why Triton here: on Hopper the fast tensor-core instruction is ``wgmma`` (asynchronous, operands
in shared memory behind descriptors, fed by a multi-stage copy pipeline). Triton generates that
code from a tile-level kernel and checks it; our hand-written ``mma.sync`` kernel
(csrc/cuda/etb_radius_kernels.cu) stays the fallback when Triton is not installed and the exact
fp32 path. The ops ``etbkernels::tc_radius`` / ``tc_radius_grad`` are declared in csrc/ops.cpp and
implemented here for CUDA; the C++ CUDA kernels of ``etb_block`` / ``etb_block_backward`` call
them through the dispatcher when they are registered (see csrc/cuda/etb_cuda.cpp).

One kernel serves both directions. For sample b, with P = A diag(s_b) Bt^T (never stored):

    out[b, row] = sum_col |P[row, col]| * wcol[b, col]
    T[b, row, col] = sign(P[row, col]) * wcol[b, col] * wrow[b, row]   (backward only)

- forward:  A = W2 (m, h), Bt = W1^T (n, h), wcol = r           -> out = radius (N, m)
- backward: A = W1^T (n, h), Bt = W2 (m, h), wcol = dL/dradius,
            wrow = r                                             -> out = dL/dr (N, n), T (N, n, m)

Each program owns one sample and BR rows and loops over all columns itself, so every output is
reduced in a fixed order (same input, same bits). Both operands are K-major (h contiguous), as
TF32 ``wgmma`` requires; the mask is applied as a select on the A tile in registers (not a
multiply: a NaN weight of an inactive unit must not leak). Inactive units still cost flops here
(the mma.sync kernel skips them); the all-active case, the benchmark's, is the same work.

Tile sizes: ``ETBK_TRITON_TILE="BR,BC,BK,warps,stages"`` overrides the defaults (for the GPU
sweep in bench/triton_sweep.py). ``TRITON_INTERPRET=1`` runs the kernel on CPU tensors (tests).
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU build: the mma.sync / FFMA kernels (or the CPU kernels) run instead
    triton = None

MAX_ROW_TILES = 65535  # grid axis 1 holds the row tiles


def available() -> bool:
    """True when Triton is importable (the tensor-core ops can be registered)."""
    return triton is not None


def default_tile(rows: int, cols: int, bf16: bool) -> Tuple[int, int, int, int, int]:
    """(BR, BC, BK, num_warps, num_stages) for a problem; ETBK_TRITON_TILE overrides it."""
    env = os.environ.get("ETBK_TRITON_TILE", "").strip()
    if env:
        try:
            br, bc, bk, warps, stages = (int(v) for v in env.split(","))
        except ValueError:
            raise ValueError(f"ETBK_TRITON_TILE must be 'BR,BC,BK,warps,stages' (5 integers), got {env!r}") from None
        for name, v in (("BR", br), ("BC", bc), ("BK", bk)):
            if v < 16 or v & (v - 1):
                raise ValueError(f"ETBK_TRITON_TILE: {name} must be a power of two >= 16, got {v}")
        return br, bc, bk, warps, stages
    br = 64 if rows <= 64 else 128
    bc = 64 if cols <= 64 else 128
    bk = 64 if bf16 else 32
    warps = 4 if br == 64 else 8
    return br, bc, bk, warps, 3


if triton is not None:

    @triton.jit
    def _abs_product_kernel(a_ptr, bt_ptr, s_ptr, wcol_ptr, out_ptr, wrow_ptr, t_ptr,
                            rows, cols, h,
                            BR: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
                            WRITE_T: tl.constexpr, TF32: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        rr = tl.program_id(1) * BR + tl.arange(0, BR)
        ri = tl.arange(0, BK)
        rc = tl.arange(0, BC)
        s_row = s_ptr + b * h
        row_ok = rr < rows
        a_rows = a_ptr + rr[:, None].to(tl.int64) * h
        # Samples with no active unit get exactly 0 (their output does not depend on the input),
        # as the mma.sync kernel gives, even where wcol is infinite.
        n_active = tl.zeros((BK,), tl.int32)
        for i0 in range(0, h, BK):
            sv = tl.load(s_row + i0 + ri, mask=i0 + ri < h, other=0.0)
            n_active += (sv != 0).to(tl.int32)
        if WRITE_T:
            wrow = tl.load(wrow_ptr + b * rows + rr, mask=row_ok, other=0.0)
        total = tl.zeros((BR,), tl.float32)
        for c0 in range(0, cols, BC):
            cc = c0 + rc
            col_ok = cc < cols
            acc = tl.zeros((BR, BC), tl.float32)
            for i0 in range(0, h, BK):
                ii = i0 + ri
                i_ok = ii < h
                sv = tl.load(s_row + ii, mask=i_ok, other=0.0)
                a = tl.load(a_rows + ii[None, :], mask=row_ok[:, None] & i_ok[None, :], other=0.0)
                a = tl.where(sv[None, :] != 0, a, tl.zeros_like(a))
                bt = tl.load(bt_ptr + cc[None, :].to(tl.int64) * h + ii[:, None],
                             mask=col_ok[None, :] & i_ok[:, None], other=0.0)
                if TF32:
                    acc = tl.dot(a, bt, acc, input_precision="tf32")
                else:
                    acc = tl.dot(a, bt, acc)
            wcol = tl.load(wcol_ptr + b * cols + cc, mask=col_ok, other=0.0)
            total += tl.sum(tl.abs(acc) * wcol[None, :], axis=1)
            if WRITE_T:
                sign = tl.where(acc > 0, 1.0, tl.where(acc < 0, -1.0, 0.0))
                t = sign * wcol[None, :] * wrow[:, None]
                t_off = b * rows * cols + rr[:, None].to(tl.int64) * cols + cc[None, :]
                tl.store(t_ptr + t_off, t, mask=row_ok[:, None] & col_ok[None, :])
        total = tl.where(tl.sum(n_active, axis=0) > 0, total, tl.zeros_like(total))
        tl.store(out_ptr + b * rows + rr, total, mask=row_ok)


def _check(a, bt, s, wcol, wrow=None):
    if triton is None:
        raise RuntimeError("etbkernels.triton_radius: Triton is not installed")
    rows, h = a.shape
    cols = bt.shape[0]
    N = s.shape[0]
    if a.dtype not in (torch.float32, torch.bfloat16) or bt.dtype != a.dtype:
        raise TypeError(f"tc_radius: A and Bt must both be float32 or bfloat16, got {a.dtype} and {bt.dtype}")
    if bt.shape[1] != h or tuple(s.shape) != (N, h) or tuple(wcol.shape) != (N, cols):
        raise ValueError(f"tc_radius: shapes do not match: A {tuple(a.shape)}, Bt {tuple(bt.shape)}, "
                         f"s {tuple(s.shape)}, wcol {tuple(wcol.shape)}")
    if wrow is not None and tuple(wrow.shape) != (N, rows):
        raise ValueError(f"tc_radius_grad: wrow must be ({N}, {rows}), got {tuple(wrow.shape)}")
    for name, t in (("A", a), ("Bt", bt), ("s", s), ("wcol", wcol), ("wrow", wrow)):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"tc_radius: {name} must be contiguous")
    for name, t in (("s", s), ("wcol", wcol), ("wrow", wrow)):
        if t is not None and t.dtype != torch.float32:
            raise TypeError(f"tc_radius: {name} must be float32, got {t.dtype}")
    return N, rows, cols, h


def _launch(a, bt, s, wcol, wrow: Optional[torch.Tensor]):
    N, rows, cols, h = _check(a, bt, s, wcol, wrow)
    out = torch.empty(N, rows, device=a.device, dtype=torch.float32)
    write_t = wrow is not None
    t = torch.empty(N, rows, cols, device=a.device, dtype=torch.float32) if write_t else out
    if N == 0 or rows == 0:
        return out, t
    if cols == 0 or h == 0:
        out.zero_()
        if write_t:
            t.zero_()
        return out, t
    br, bc, bk, warps, stages = default_tile(rows, cols, a.dtype == torch.bfloat16)
    row_tiles = triton.cdiv(rows, br)
    if row_tiles > MAX_ROW_TILES:
        raise ValueError(f"tc_radius: at most {MAX_ROW_TILES * br} rows per call, got {rows}")
    _abs_product_kernel[(N, row_tiles)](
        a, bt, s, wcol, out, wrow if write_t else wcol, t,
        rows, cols, h,
        BR=br, BC=bc, BK=bk, WRITE_T=write_t, TF32=a.dtype == torch.float32,
        num_warps=warps, num_stages=stages)
    return out, t


def tc_radius(a: torch.Tensor, bt: torch.Tensor, s: torch.Tensor, wcol: torch.Tensor) -> torch.Tensor:
    """out[b, row] = sum_col |(A diag(s_b) Bt^T)[row, col]| wcol[b, col] on tensor cores.

    A (rows, h), Bt (cols, h): float32 (TF32 inputs, to be pre-rounded by the caller) or bfloat16;
    s (N, h) 0/1 mask, wcol (N, cols) float32; all contiguous. Returns (N, rows) float32."""
    return _launch(a, bt, s, wcol, None)[0]


def tc_radius_grad(a: torch.Tensor, bt: torch.Tensor, s: torch.Tensor, wcol: torch.Tensor,
                   wrow: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`tc_radius` plus T[b, row, col] = sign(P[row, col]) wcol[b, col] wrow[b, row] (N, rows, cols)."""
    return _launch(a, bt, s, wcol, wrow)


def register() -> bool:
    """Registers tc_radius / tc_radius_grad as the CUDA kernels of the etbkernels ops of that name.

    Returns False (and registers nothing) without Triton or without the ops (a CPU build)."""
    if triton is None or not torch._C._dispatch_has_kernel_for_dispatch_key("etbkernels::etb_block", "CUDA"):
        return False
    if torch._C._dispatch_has_kernel_for_dispatch_key("etbkernels::tc_radius", "CUDA"):
        return True
    torch.library.impl("etbkernels::tc_radius", "cuda")(tc_radius)
    torch.library.impl("etbkernels::tc_radius_grad", "cuda")(tc_radius_grad)
    return True
