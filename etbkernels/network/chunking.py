"""How ``bounds`` splits a batch into chunks of samples: the default chunk sizes (memory and, on CPU,
cache rules) and the chunked runner, shared by every method's driver."""
from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .etb import forward_numel_per_sample, out_rows, saved_numel_per_sample
from .layers import numel
from .parse import Network

#: Memory the chunking aims at for the largest per-chunk tensors (bytes); see ``chunk_size``.
DEFAULT_CHUNK_BYTES = 1 << 30
#: On CPU the forward (``mask="etb"``) path also keeps its largest per-chunk tensor near this size,
#: so a chunk's elementwise passes and scatter-adds stay in the last-level cache: on a 2-core EPYC
#: (32 MiB L3), batch 256, the default chunks (8 samples on the small CNN, 4 on the medium) were
#: 1.9x and 1.4x faster than 1 GiB chunks (``bench/chunk_size_network.py``).
CPU_CACHE_CHUNK_BYTES = 32 << 20
#: Tensors of the largest size a step of the forward path holds at once (a patches convolution: its
#: input, the tap's copy of it and its output), all of which the cache should hold: with one, the
#: medium CNN's chunks of 13 ran 1.3x slower than chunks of 4 (no gradients, 1 thread, 2026-12-06).
CACHE_TENSORS = 3
#: With gradients, chunks this many times the cache rule's: the backward's matmuls (the patches
#: convolutions' weight and input gradients) get as many times the rows. Medium CNN training step,
#: batch 256, 1 thread: chunks of 8 about 5% faster than 4, and 6, 8 and 12 within noise of each
#: other; small CNN 8 and 16, and the 784-1024-1024-10 MLP 3 and 6, within noise (2026-12-06).
GRAD_CACHE_FACTOR = 2


def split_spec(spec):
    """(spec if shared (K, out) else None, spec if per sample (N, K, out) else None): the per-sample
    one is chunked with the samples."""
    if spec is None:
        return None, None
    return (spec, None) if spec.dim() == 2 else (None, spec)


def needs_grad(net: Network, mu, r) -> bool:
    return torch.is_grad_enabled() and (mu.requires_grad or r.requires_grad or any(
        p.requires_grad for st in net.stages for op in st for p in vars(op).values() if isinstance(p, Tensor)))


def backward_chunk(net: Network, spec, rows_per_output: int, elem: int) -> int:
    """Samples per chunk of a backward pull-back of ``rows_per_output`` x K rows (K: spec rows or
    outputs) that keeps its tensors near ``DEFAULT_CHUNK_BYTES``."""
    K = out_rows(net, spec)
    widest = max(max(numel(op.in_shape), numel(op.out_shape)) for st in net.stages for op in st)
    return max(1, DEFAULT_CHUNK_BYTES // max(1, 3 * rows_per_output * K * widest * elem))


def memory_chunk(net: Network, grad: bool, elem: int) -> int:
    """Samples per chunk of :func:`etb_forward` that keep its tensors near ``DEFAULT_CHUNK_BYTES``
    (with gradients a chunk's whole graph is alive in backward)."""
    return max(1, DEFAULT_CHUNK_BYTES // max(1, 3 * forward_numel_per_sample(net, total=grad) * elem))


def kept_samples(net: Network, elem: int, tail=None) -> int:
    """Samples whose output-only :func:`etb_forward` graphs fit ``DEFAULT_CHUNK_BYTES``: kept for
    backward instead of checkpointed. ``tail``: where its lazy tail starts (``etb_tail.tail_start``;
    None: no lazy tail). Sized by what the graph saves (:func:`.etb.saved_numel_per_sample`), not by
    every tensor formed: on the medium CNN that keeps 154 samples instead of 93 (batch 128: no
    recomputation at all)."""
    return max(1, DEFAULT_CHUNK_BYTES // max(1, saved_numel_per_sample(net, tail) * elem))


def forward_chunk(net: Network, grad: bool, elem: int, device) -> int:
    """Default samples per chunk of :func:`etb_forward`: :func:`memory_chunk`, and on CPU at most
    what keeps ``CACHE_TENSORS`` of the largest tensor about cache-sized (``GRAD_CACHE_FACTOR``
    times that with gradients)."""
    chunk = memory_chunk(net, grad, elem)
    if device.type == "cpu":
        size = CACHE_TENSORS * forward_numel_per_sample(net) * elem
        cached = max(1, CPU_CACHE_CHUNK_BYTES // max(1, size))
        chunk = min(chunk, cached * GRAD_CACHE_FACTOR if grad else cached)
    return chunk


def chunked(fn, N: int, chunk: int, *tensors, keep: int = 0, record: bool = False):
    """Runs ``fn`` on slices of ``chunk`` samples and concatenates; checkpoints when grads flow.

    ``keep``: the graphs of the chunks within the first ``keep`` samples are kept for backward
    instead of checkpointed (recomputing a chunk's forward costs most of what running it did), e.g. as
    many samples as :func:`kept_samples` allows; the rest are checkpointed.
    ``record``: a checkpointed chunk's ``fn`` gets ``record=`` one empty list of its own, which its
    forward may fill with what the recomputation can reuse (e.g. :func:`.etb.etb_forward`'s masks)."""
    grad = torch.is_grad_enabled()
    outs = []
    for s in range(0, max(N, 1), chunk):  # N = 0: one call on the empty slices gives empty results
        args = [None if t is None else t[s:s + chunk] for t in tensors]
        if grad and N > chunk and s + chunk > keep:
            outs.append(checkpoint(functools.partial(fn, record=[]) if record else fn, *args, use_reentrant=False))
        else:
            outs.append(fn(*args))
    if isinstance(outs[0], tuple):
        return tuple(torch.cat([o[i] for o in outs]) if len(outs) > 1 else outs[0][i] for i in range(len(outs[0])))
    return torch.cat(outs) if len(outs) > 1 else outs[0]
