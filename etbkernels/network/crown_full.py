"""CROWN: sound bounds of every layer by backward linear relaxation, on CROWN's own intervals.

CROWN-IBP (:mod:`.crown`) relaxes each ReLU on IBP's pre-activation interval and runs the
backward pass once, from the output. Full CROWN (Zhang et al., "Efficient Neural Network
Robustness Certification with General Activation Functions", NeurIPS 2018; auto_LiRPA's
``method="CROWN"``) gets those intervals from CROWN itself, layer by layer:

- stage 0's interval is exact: IBP's when at most one of its ops mixes neurons, else the
  pull-back below with no ReLU to relax;
- for stage k >= 1 every neuron i is a row ``e_i`` pulled back through stages k .. 0, each ReLU
  before it relaxed on the interval already computed for it, and bounded over the box: the
  upper bound of ``e_i`` and minus the upper bound of ``-e_i`` (:func:`.crown.upper_bounds`);
- each interval is intersected with IBP's image of the previous (intersected) interval, which is
  sound too and costs nothing next to the pull-backs (as in :mod:`.crown_forward`);
- the output (or the spec rows) is the same backward pass from its K rows.

Sound up to floating-point rounding. Cost: two rows per hidden neuron, each pulled back through
the whole prefix before it: on its receptive-field windows while that prefix is convolutional
(:mod:`.crown_windows`), else as a dense image (rows that come through a Linear layer), which
costs a transposed pass of the prefix per row. ``python bench/crown_full.py``: 38 ms per sample on
the small CNN and 1.4 s on the medium one, 125x and 1,720x IBP (10x and 4.5x less than with dense
rows everywhere; 1.7x and 2.0x less than auto_LiRPA 0.3's full CROWN, same bounds). It is the
tightest sound method here on networks not trained for IBP, and the slowest.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .._progress import progress
from . import crown_windows
from .crown_ibp import crown_backward, relaxation_terms, signed_unit_rows, stage_offset, upper_bounds
from .crown_forward import intersect
from .pullback import BACKWARD_IMAGES
from .graph_ops import relu_interval
from .ibp import ibp_stage
from .parse import Network

#: Numbers in one row group's largest tensor on a dense network (rows x samples x widest layer).
DENSE_GROUP_NUMEL = 1 << 24


def prefix(net: Network, k: int) -> Network:
    """The network of stages 0 .. k, ending at stage k's output (no ReLU after it)."""
    return Network(in_shape=net.in_shape, stages=net.stages[:k + 1], options=net.options)


def neuron_group(net: Network, N: int, k: int, images: Optional[int] = None) -> int:
    """Neurons of stage k per pull-back call (two rows each): about ``images`` (default
    :data:`.pullback.BACKWARD_IMAGES`) rows x samples per transposed convolution on a convolutional
    prefix; on a dense one, at most :data:`DENSE_GROUP_NUMEL` numbers in the rows' tensor."""
    h = math.prod(net.stages[k][-1].out_shape)
    stages = net.stages[:k + 1]
    if any(op.channels_last for st in stages for op in st):
        return max(1, min(h, (BACKWARD_IMAGES if images is None else images) // max(2 * N, 1)))
    widest = max(math.prod(s) for st in stages for op in st for s in (op.in_shape, op.out_shape))
    return max(1, min(h, DENSE_GROUP_NUMEL // max(1, 2 * N * widest)))


def crown_neurons(net: Network, mu: Tensor, r: Tensor, relax, offsets, images: Optional[int] = None,
                  desc: str = "CROWN") -> Tuple[Tensor, Tensor]:
    """Backward CROWN (lower, upper) of every neuron of ``net``'s output, each (N, *out_shape):
    on the rows' windows (:mod:`.crown_windows`) after convolutions only, else dense rows."""
    if crown_windows.applies(net):
        return crown_windows.crown_neurons_windowed(net, mu, r, relax, offsets, desc)
    N = mu.shape[0]
    shape = tuple(net.out_shape)
    h = math.prod(shape)
    g = neuron_group(net, N, len(net.stages) - 1, images)
    starts = range(0, h, g)
    lowers, uppers = [], []
    for g0 in progress(starts, desc=desc, unit="group", leave=False, disable=len(starts) <= crown_windows.PROGRESS_CALLS or None):
        rows = min(g, h - g0)
        lam = signed_unit_rows(g0, rows, h, mu.dtype, mu.device).reshape((1, 2 * rows) + shape)
        lam = lam.expand((N, 2 * rows) + shape)
        up = upper_bounds(net, lam, relax, offsets, mu, r)
        uppers.append(up[:, :rows])
        lowers.append(-up[:, rows:])
    return torch.cat(lowers, 1).reshape((N,) + shape), torch.cat(uppers, 1).reshape((N,) + shape)


def crown_layers(net: Network, mu: Tensor, r: Tensor, spec: Optional[Tensor] = None,
                 images_per_call: Optional[int] = None) -> List[Tuple[Tensor, Tensor]]:
    """Full CROWN bounds of every stage output for a chunk of samples.

    Args:
        mu, r: (N, *in_shape) box centre and radius (r >= 0).
        spec: optional (N, K, out) or (K, out) matrix applied to the output.
        images_per_call: rows x samples per transposed convolution (see :func:`neuron_group`).

    Returns:
        [(lower, upper)] per stage: each ReLU's pre-activation (N, *stage shape), then the output
        (N, out) or (N, K).
    """
    last = len(net.stages) - 1
    offsets = [stage_offset(st, mu.dtype, mu.device) for st in net.stages]
    ic, ir = ibp_stage(net.stages[0], mu, r, spec if last == 0 else None)
    if last == 0:  # an affine network: the backward pass is exact
        lo, up = crown_backward(net, mu, r, [], spec, images_per_call)
        ic, ir = ic.flatten(1), ir.flatten(1)
        return [intersect(lo, up, ic - ir, ic + ir)]
    if ibp_is_exact(net.stages[0]):
        out = [(ic - ir, ic + ir)]
    else:  # e.g. Conv2d then AvgPool2d: IBP op by op is looser than the pull-back of their product
        lo, up = crown_neurons(prefix(net, 0), mu, r, [], offsets[:1], images_per_call, desc="CROWN stage 0")
        out = [intersect(lo, up, ic - ir, ic + ir)]
    relax = []
    for k in range(1, last + 1):
        lower, upper = out[-1]
        relax.append(relaxation_terms(lower, upper))
        ic, ir = ibp_stage(net.stages[k], *relu_interval((upper + lower) / 2, (upper - lower) / 2),
                           spec if k == last else None)
        if k == last:
            lo, up = crown_backward(net, mu, r, out, spec, images_per_call)
            ic, ir = ic.flatten(1), ir.flatten(1)
        else:
            lo, up = crown_neurons(prefix(net, k), mu, r, relax, offsets[:k + 1], images_per_call,
                                   desc=f"CROWN stage {k}/{last}")
        out.append(intersect(lo, up, ic - ir, ic + ir))
    return out


def ibp_is_exact(stage) -> bool:
    """Whether IBP through the stage is its exact range over a box: at most one of its ops mixes
    neurons (per-channel affine maps and Flatten only scale or reorder them: ``|W D| = |W| |D|``)."""
    return sum(not (op.is_reshape or op.channel_scale() is not None) for op in stage) <= 1


def graph_numel_per_sample(net: Network) -> int:
    """Numbers per sample a :func:`crown_layers` graph keeps for backward: every row of every
    hidden stage at every op it is pulled back through (for the chunk size with gradients)."""
    total = 0
    for k in range(1, len(net.stages) - 1):
        h = math.prod(net.stages[k][-1].out_shape)
        total += 2 * h * sum(math.prod(op.in_shape) for st in net.stages[:k + 1] for op in st)
    return max(total, 1)
