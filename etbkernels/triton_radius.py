"""Tensor-core ETB radius kernels in Triton: the TF32 / BF16 paths of the CUDA build.

Why Triton here: on Hopper the fast tensor-core instruction is ``wgmma`` (asynchronous, operands
in shared memory behind descriptors, fed by a multi-stage copy pipeline). Triton generates that
code from a tile-level kernel and checks it; our hand-written ``mma.sync`` kernel
(csrc/cuda/etb_radius_kernels.cu) stays the fallback when Triton is not installed and the exact
fp32 path. The ops ``etbkernels::tc_radius`` / ``tc_radius_grad`` / ``tc_weight_grad`` are declared
in csrc/ops.cpp and implemented here for CUDA; the C++ CUDA kernels of ``etb_block`` /
``etb_block_backward`` call them through the dispatcher when they are registered (see
csrc/cuda/etb_cuda.cpp).

``_abs_product_kernel`` serves both directions. For sample b, with P = A diag(s_b) Bt^T (never stored):

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

``_masked_weight_grad_kernel`` then gives dW1 and dW2^T from T (see :func:`tc_weight_grad`).

Tile sizes: ``ETBK_TRITON_TILE`` and ``ETBK_TRITON_WGRAD_TILE`` ("BR,BC,BK,warps,stages") override
the defaults (for the GPU sweep in bench/triton_sweep.py). ``TRITON_INTERPRET=1`` runs the kernels
on CPU tensors (the tests do so on machines without a GPU).

Variants that are compiled and tested (interpreter) but not yet run on a GPU, so not the default:
``tc_radius(..., exact=True)`` (exact fp32 FMA products; ``ETBK_CUDA_FFMA=triton`` routes the
"highest" forward here), ``tc_radius_grad(..., both_layouts=True)`` (the T kernel also stores T
transposed; ``ETBK_TRITON_T_LAYOUT=dual``) and wave-sized weight-gradient splits
(``ETBK_TRITON_SPLITS=waves``). bench/bench_cuda.py and bench/triton_sweep.py time each against the
default in the same run.
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
        return _parse_tile("ETBK_TRITON_TILE", env)
    # From bench/triton_sweep.py on an H100 (triton 3.6; bench/results/triton_sweep_h100*.md): 128 x 256
    # tiles were the fastest at both benchmark shapes, TF32 (0.80-0.81 of a TF32 bmm) and BF16, and
    # for the backward's T kernel; smaller problems get smaller tiles.
    br = 64 if rows <= 64 else 128
    bc = 64 if cols <= 64 else (128 if cols <= 128 else 256)
    bk = 64 if bf16 else 32
    warps = 4 if br == 64 and bc <= 128 else 8
    return br, bc, bk, warps, 3


def _parse_tile(var: str, env: str) -> Tuple[int, int, int, int, int]:
    try:
        br, bc, bk, warps, stages = (int(v) for v in env.split(","))
    except ValueError:
        raise ValueError(f"{var} must be 'BR,BC,BK,warps,stages' (5 integers), got {env!r}") from None
    for name, v in (("BR", br), ("BC", bc), ("BK", bk)):
        if v < 16 or v & (v - 1):
            raise ValueError(f"{var}: {name} must be a power of two >= 16, got {v}")
    return br, bc, bk, warps, stages


if triton is not None:

    @triton.jit
    def _abs_product_kernel(a_ptr, bt_ptr, s_ptr, wcol_ptr, out_ptr, wrow_ptr, t_ptr, tt_ptr,
                            rows, cols, h,
                            BR: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr,
                            WRITE_T: tl.constexpr, WRITE_TT: tl.constexpr, PRECISION: tl.constexpr):
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
                # "tf32" / "ieee" (exact fp32 FMA) for float32 operands; bfloat16 ignores it
                acc = tl.dot(a, bt, acc, input_precision=PRECISION)
            wcol = tl.load(wcol_ptr + b * cols + cc, mask=col_ok, other=0.0)
            total += tl.sum(tl.abs(acc) * wcol[None, :], axis=1)
            if WRITE_T:
                sign = tl.where(acc > 0, 1.0, tl.where(acc < 0, -1.0, 0.0))
                t = sign * wcol[None, :] * wrow[:, None]
                # T feeds the TF32 weight-gradient kernel: round to nearest here (ties away, as
                # cvt.rna), else the tensor cores would truncate its low 13 bits (a bias).
                t_bits = t.to(tl.int32, bitcast=True)
                t = ((t_bits + 0x1000) & -8192).to(tl.float32, bitcast=True)
                t_off = b * rows * cols + rr[:, None].to(tl.int64) * cols + cc[None, :]
                tl.store(t_ptr + t_off, t, mask=row_ok[:, None] & col_ok[None, :])
                if WRITE_TT:  # the same tile in the (cols, rows) layout: no transposed copy of T later
                    tt_off = b * rows * cols + cc[None, :].to(tl.int64) * rows + rr[:, None]
                    tl.store(tt_ptr + tt_off, t, mask=row_ok[:, None] & col_ok[None, :])
        total = tl.where(tl.sum(n_active, axis=0) > 0, total, tl.zeros_like(total))
        tl.store(out_ptr + b * rows + rr, total, mask=row_ok)

    @triton.jit
    def _masked_weight_grad_kernel(a_ptr, t_ptr, s_ptr, part_ptr, h, tdim, xdim, C, per_split,
                                   BI: tl.constexpr, BX: tl.constexpr, BT: tl.constexpr):
        # part[split, i, x] = sum_{b in split} sum_t [s[b, i] != 0] A[i, t] T[b, x, t]: one long
        # contraction over (b, t), the mask a select on A's rows (in registers, as in the forward),
        # both operands K-major (t contiguous) as TF32 wgmma needs.
        split = tl.program_id(2)
        ri = tl.program_id(0) * BI + tl.arange(0, BI)
        rx = tl.program_id(1) * BX + tl.arange(0, BX)
        rt = tl.arange(0, BT)
        i_ok = ri < h
        x_ok = rx < xdim
        a_rows = a_ptr + ri[:, None].to(tl.int64) * tdim
        t_cols = rx[None, :].to(tl.int64) * tdim
        nt = (tdim + BT - 1) // BT
        b0 = split * per_split
        nb = tl.minimum(per_split, C - b0)
        acc = tl.zeros((BI, BX), tl.float32)
        for it in range(0, nb * nt):  # flat (b, t) loop: one software pipeline for all samples
            b64 = tl.cast(b0 + it // nt, tl.int64)
            tt = (it % nt) * BT + rt
            t_ok = tt < tdim
            sv = tl.load(s_ptr + b64 * h + ri, mask=i_ok, other=0.0)
            a = tl.load(a_rows + tt[None, :], mask=i_ok[:, None] & t_ok[None, :], other=0.0)
            a = tl.where(sv[:, None] != 0, a, tl.zeros_like(a))
            tb = tl.load(t_ptr + b64 * xdim * tdim + t_cols + tt[:, None], mask=t_ok[:, None] & x_ok[None, :],
                         other=0.0)
            acc = tl.dot(a, tb, acc, input_precision="tf32")
        off = split.to(tl.int64) * h * xdim + ri[:, None].to(tl.int64) * xdim + rx[None, :]
        tl.store(part_ptr + off, acc, mask=i_ok[:, None] & x_ok[None, :])


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


def _launch(a, bt, s, wcol, wrow: Optional[torch.Tensor], both_layouts: bool = False, precision: str = "tf32"):
    """The kernel launch behind the ops. ``precision`` of float32 products: "tf32" (bfloat16 operands
    ignore it), "ieee" (exact fp32, ``exact=True``) or "tf32x3" (only bench/triton_sweep.py uses it)."""
    N, rows, cols, h = _check(a, bt, s, wcol, wrow)
    if precision != "tf32" and a.dtype != torch.float32:
        raise TypeError(f"tc_radius: {precision} products (exact=True) need float32 operands, got {a.dtype}")
    out = torch.empty(N, rows, device=a.device, dtype=torch.float32)
    write_t = wrow is not None
    write_tt = write_t and both_layouts
    # without T, the kernel's (unused) T and wrow pointers are given any valid tensor
    t = torch.empty(N, rows, cols, device=a.device, dtype=torch.float32) if write_t else out
    tt = torch.empty(N, cols, rows, device=a.device, dtype=torch.float32) if write_tt else out.new_empty(0)
    if N == 0 or rows == 0:
        return out, t, tt
    if cols == 0 or h == 0:
        out.zero_()
        if write_t:
            t.zero_()
        return out, t, tt
    br, bc, bk, warps, stages = default_tile(rows, cols, a.dtype == torch.bfloat16)
    row_tiles = triton.cdiv(rows, br)
    if row_tiles > MAX_ROW_TILES:
        raise ValueError(f"tc_radius: at most {MAX_ROW_TILES * br} rows per call, got {rows}")
    _abs_product_kernel[(N, row_tiles)](
        a, bt, s, wcol, out, wrow if write_t else wcol, t, tt if write_tt else t,
        rows, cols, h,
        BR=br, BC=bc, BK=bk, WRITE_T=write_t, WRITE_TT=write_tt, PRECISION=precision,
        num_warps=warps, num_stages=stages)
    return out, t, tt


def tc_radius(a: torch.Tensor, bt: torch.Tensor, s: torch.Tensor, wcol: torch.Tensor,
              exact: bool = False) -> torch.Tensor:
    """out[b, row] = sum_col |(A diag(s_b) Bt^T)[row, col]| wcol[b, col] on tensor cores.

    A (rows, h), Bt (cols, h): float32 (TF32 inputs, to be pre-rounded by the caller) or bfloat16;
    s (N, h) 0/1 mask, wcol (N, cols) float32; all contiguous. Returns (N, rows) float32.
    ``exact=True`` (float32 only) multiplies in exact fp32 with FMAs instead of TF32 (the
    ``ETBK_CUDA_FFMA=triton`` variant of the "highest" path; no tensor cores)."""
    return _launch(a, bt, s, wcol, None, precision="ieee" if exact else "tf32")[0]


def tc_radius_grad(a: torch.Tensor, bt: torch.Tensor, s: torch.Tensor, wcol: torch.Tensor,
                   wrow: torch.Tensor, both_layouts: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`tc_radius` plus T[b, row, col] = sign(P[row, col]) wcol[b, col] wrow[b, row] (N, rows, cols),
    rounded to TF32 (it is the TF32 input of :func:`tc_weight_grad`).

    Returns (out, T, T2): T2 is T in the (N, cols, rows) layout when ``both_layouts`` (written by the
    same kernel, so the backward needs no transposed copy), else an empty tensor."""
    return _launch(a, bt, s, wcol, wrow, both_layouts=both_layouts)


def weight_grad_splits(tiles: int, C: int, target: int = 264, slots: Optional[int] = None) -> int:
    """Sample splits of the weight-gradient kernel (at most one split per sample). Fixed for given
    sizes, so the result is deterministic.

    Without ``slots`` (the "legacy" policy, the measured default): about ``target`` programs (2 per
    SM of an H100). With ``slots`` (programs resident at once: SMs x CTAs per SM; the "waves"
    policy): the split count that minimizes waves x samples per program, the kernel's time if every
    program of a wave takes as long, among those giving at most ~8 waves (each split adds an (h, xdim)
    partial sum); ties go to fewer splits. E.g. 96
    output tiles, 64 samples, 132 slots: 4 splits (384 programs, 3 full-ish waves of 16 samples)
    instead of the legacy 3 (288 programs: 3 waves of 22 samples, the last 18% full)."""
    tiles, C = max(tiles, 1), max(C, 1)
    if slots is None:
        return max(1, min(C, -(-target // tiles)))
    best, best_cost = 1, None
    for sp in range(1, min(C, max(1, -(-8 * slots // tiles))) + 1):
        per_split = -(-C // sp)
        programs = tiles * -(-C // per_split)
        cost = -(-programs // slots) * per_split
        if best_cost is None or cost < best_cost:
            best, best_cost = sp, cost
    return best


def resident_ctas(props, tile: Tuple[int, int, int, int, int]) -> int:
    """CTAs of the weight-gradient kernel that fit on one SM at once, estimated from the tile: its
    pipeline buffers (stages x (BI + BX) x BT floats; Triton reports 132 KB for the default tile,
    the estimate says 147 KB), the accumulator's registers plus 64, and threads. 1 for the default
    tile on an H100 (228 KB of shared memory per SM). ``props``: torch.cuda.get_device_properties(...)."""
    bi, bx, bt, warps, stages = tile
    threads = warps * 32
    smem = stages * (bi + bx) * bt * 4
    regs = min(255, bi * bx // threads + 64) * threads
    fits = (getattr(props, "shared_memory_per_multiprocessor", 0) // smem,
            getattr(props, "regs_per_multiprocessor", 0) // regs,
            getattr(props, "max_threads_per_multi_processor", 0) // threads)
    return max(1, min(fits))


def _split_slots(device: torch.device, tile) -> Optional[int]:
    """Slots for the "waves" split policy (ETBK_TRITON_SPLITS=waves), None for "legacy" (default)."""
    policy = os.environ.get("ETBK_TRITON_SPLITS", "legacy").strip() or "legacy"
    if policy not in ("legacy", "waves"):
        raise ValueError(f"ETBK_TRITON_SPLITS must be legacy or waves, got {policy!r}")
    if policy == "legacy":
        return None
    if device.type != "cuda":  # the interpreter: an H100's 132 SMs, one CTA each
        return 132
    props = torch.cuda.get_device_properties(device)
    return props.multi_processor_count * resident_ctas(props, tile)


def tc_weight_grad(a: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """out[i, x] = sum_b [s[b, i] != 0] sum_t A[i, t] T[b, x, t] on tensor cores (TF32): the backward's
    weight gradients (dW1 = tc_weight_grad(W2^T, T), dW2^T = tc_weight_grad(W1, T^T) for the T of
    :func:`tc_radius_grad`).

    A (h, tdim) and T (C, xdim, tdim) float32 (TF32-rounded by the caller), s (C, h); all contiguous.
    Returns (h, xdim) float32. The samples are split over a fixed number of programs and the partial
    sums added in a fixed order (deterministic)."""
    if triton is None:
        raise RuntimeError("etbkernels.triton_radius: Triton is not installed")
    if a.dtype != torch.float32 or t.dtype != torch.float32 or s.dtype != torch.float32:
        raise TypeError(f"tc_weight_grad: A, T and s must be float32, got {a.dtype}, {t.dtype}, {s.dtype}")
    if t.dim() != 3 or s.dim() != 2 or a.dim() != 2:
        raise ValueError("tc_weight_grad: A must be 2-D, T 3-D and s 2-D")
    C, xdim, tdim = t.shape
    h = a.shape[0]
    if a.shape[1] != tdim or tuple(s.shape) != (C, h):
        raise ValueError(f"tc_weight_grad: shapes do not match: A {tuple(a.shape)}, T {tuple(t.shape)}, "
                         f"s {tuple(s.shape)}")
    for name, x in (("A", a), ("T", t), ("s", s)):
        if not x.is_contiguous():
            raise ValueError(f"tc_weight_grad: {name} must be contiguous")
    if C == 0 or h == 0 or xdim == 0 or tdim == 0:
        return torch.zeros(h, xdim, device=a.device, dtype=torch.float32)
    bi, bx, bt, warps, stages = tile = weight_grad_tile()
    tiles = triton.cdiv(h, bi) * triton.cdiv(xdim, bx)
    per_split = -(-C // weight_grad_splits(tiles, C, slots=_split_slots(a.device, tile)))
    splits = -(-C // per_split)
    part = torch.empty(splits, h, xdim, device=a.device, dtype=torch.float32)
    _masked_weight_grad_kernel[(triton.cdiv(h, bi), triton.cdiv(xdim, bx), splits)](
        a, t, s, part, h, tdim, xdim, C, per_split,
        BI=bi, BX=bx, BT=bt, num_warps=warps, num_stages=stages)
    return part.sum(0) if splits > 1 else part[0]


def weight_grad_tile() -> Tuple[int, int, int, int, int]:
    """(BI, BX, BT, num_warps, num_stages) of the weight-gradient kernel; ETBK_TRITON_WGRAD_TILE overrides it."""
    env = os.environ.get("ETBK_TRITON_WGRAD_TILE", "").strip()
    return _parse_tile("ETBK_TRITON_WGRAD_TILE", env) if env else (128, 256, 32, 8, 3)


def register() -> bool:
    """Registers tc_radius / tc_radius_grad / tc_weight_grad as the CUDA kernels of the etbkernels ops
    of those names.

    Returns False (and registers nothing) without Triton or without the ops (a CPU build)."""
    if triton is None or not torch._C._dispatch_has_kernel_for_dispatch_key("etbkernels::etb_block", "CUDA"):
        return False
    if torch._C._dispatch_has_kernel_for_dispatch_key("etbkernels::tc_radius", "CUDA"):
        return True
    torch.library.impl("etbkernels::tc_radius", "cuda")(tc_radius)
    torch.library.impl("etbkernels::tc_radius_grad", "cuda")(tc_radius_grad)
    torch.library.impl("etbkernels::tc_weight_grad", "cuda")(tc_weight_grad)
    return True
