"""Flop counts: what a call really executes (torch's formulas on every aten call), the block ops'
flops by formula, and this machine's matmul rate (docs/benchmarks.md uses all three).

A floor is flops / this machine's float32 matmul rate: the time of a perfect implementation of
the same arithmetic. count_flops leaves out elementwise work (masks, |.|, sums; the block
formulas count only ETB's |P| r sum), so floors are optimistic.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


def flop_formula(func):
    """torch's flop formula for an aten op, or for the out-of-place op of an in-place one
    (``baddbmm_``, ``addmm_``: the registry lists only ``baddbmm``, ``addmm``); None if it has none."""
    formula = flop_registry.get(func._overloadpacket)
    name = func._overloadpacket.__name__
    if formula is None and name.endswith("_") and hasattr(torch.ops.aten, name[:-1]):
        formula = flop_registry.get(getattr(torch.ops.aten, name[:-1]))
    return formula


class _FlopCount(TorchDispatchMode):
    """Adds up torch's flop formulas (mm, bmm, addmm, convolution and their backward) over every
    aten call. (torch's FlopCounterMode also tracks modules, which breaks torch.autograd.grad
    with respect to an input, as the per-logit algorithm does.)"""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_formula(func)
        if formula is not None:
            self.flops += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(fn: Callable[[], object]) -> int:
    """Matmul/convolution flops of one call of ``fn`` (custom ops such as etb_block count 0)."""
    with _FlopCount() as counter:
        fn()
    return counter.flops


def block_flops(method: str, N: int, n: int, h: int, m: int, backward: bool = False) -> float:
    """Flops of one block call (forward, or forward + backward) on N boxes: n inputs, h hidden
    units (all counted active), m outputs. P = W2 diag(s) W1 costs p = 2 N m h n.

    - ``etb``: the radius forms P and sums |P| r (p + 2 N m n); the centre and the mask take W1 c,
      |W1| r and W2 (s * c1) (4 N h n + 2 N m h). The fused backward recomputes P and contracts it
      for both weight gradients (3 p), and takes the gradients of W1 c and W2 (s * c1) (4 N h n + 4 N m h).
    - ``naive``: the reference keeps P in memory, so its backward skips the recomputation (2 p).
    - ``ibp``: centre and radius through each layer, two matmuls per layer (4 N h n + 4 N m h); the
      backward takes two products per matmul (twice the forward).
    - ``matmul``: the same-flops baseline, one (N m, h) @ (h, n) product (p); its backward two more.

    tests/test_bench_harness.py checks these against the matmul flops torch counts for the
    references (bench/harness/flops.count_flops)."""
    p = 2.0 * N * m * h * n
    if method in ("etb", "naive"):
        fwd = p + 2.0 * N * m * n + 4.0 * N * h * n + 2.0 * N * m * h
        bwd = (3 if method == "etb" else 2) * p + 4.0 * N * h * n + 4.0 * N * m * h
    elif method == "ibp":
        fwd = 4.0 * N * h * n + 4.0 * N * m * h
        bwd = 2 * fwd
    elif method == "matmul":
        fwd, bwd = p, 2 * p
    else:
        raise ValueError(f"block_flops: unknown method {method!r}")
    return fwd + (bwd if backward else 0.0)


def matmul_rate(size: int = 2048, repeats: int = 5) -> float:
    """float32 flop/s of a size^3 torch.mm (median of ``repeats``): this machine's attainable rate."""
    from .timing import median_seconds

    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size ** 3 / median_seconds(lambda: a @ b, repeats)
