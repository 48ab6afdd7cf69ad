"""Every method of ``etbkernels.bounds`` on a traced graph that is not a chain (:mod:`.dag`), chunked
over samples like the chain methods (:mod:`.chunking`)."""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from ..bounds_type import Bounds
from . import chunking, dag
from .build import Graph
from .crown_forward import intersect
from .ibp import apply_spec_center_radius
from .layers import numel
from .pullback import output_rows

#: Bytes a full-CROWN row group aims at (rows x samples x the widest node).
ROW_GROUP_BYTES = 256 << 20


def bounds(graph: Graph, mu: Tensor, r: Tensor, method: str, mask, center_at: str, spec: Optional[Tensor],
           chunk_size: Optional[int], given: Optional[List[Tensor]]) -> List[Bounds]:
    """[pre-activation bounds of each ReLU / max-pool input ..., output bounds] (the output flat, or spec rows)."""
    spec2, spec3 = chunking.split_spec(spec)
    feeds = dag.nonlinear_inputs(graph)
    n, widest = numel(graph.in_shape), max(numel(nd.shape) for nd in graph.nodes)
    elem = mu.element_size()
    # forward paths hold directions (N, n, *node) for a few nodes at once
    chunk = chunk_size or max(1, min(chunking.DEFAULT_CHUNK_BYTES // max(1, 8 * n * widest * elem),
                                     max(1, chunking.CPU_CACHE_CHUNK_BYTES // max(1, n * widest * elem))
                                     if mu.device.type == "cpu" else mu.shape[0] or 1))

    def pairs(flat):
        return [Bounds(flat[2 * k], flat[2 * k + 1]) for k in range(len(flat) // 2)]

    if method == "ibp":
        def run(mu_c, r_c, spec_c):
            (c, q), kept = dag.ibp(graph, mu_c, r_c, keep=feeds)
            out = _spec_interval(c, q, spec2 if spec_c is None else spec_c)
            return tuple(t for j in feeds for t in (kept[j][0] - kept[j][1], kept[j][0] + kept[j][1])) + out
        return pairs(chunking.chunked(run, mu.shape[0], mu.shape[0] or 1, mu, r, spec3))

    if method == "etb":
        def run(mu_c, r_c, spec_c, *given_c):
            ends = None
            if given is None and mask == "ibp":
                _, kept = dag.ibp(graph, mu_c, r_c, keep=feeds)
                ends = {j: (kept[j][0] + kept[j][1]).detach() for j in feeds}
            (z, rad), pre = dag.etb(graph, mu_c, r_c, center_at, ends, list(given_c) if given is not None else None,
                                    spec2 if spec_c is None else spec_c)
            return tuple(t for c, q in pre + [(z, rad)] for t in (c - q, c + q))
        return pairs(chunking.chunked(run, mu.shape[0], chunk, mu, r, spec3, *(given or [])))

    if method == "crown-ibp":
        def run(mu_c, r_c, spec_c):
            _, kept = dag.ibp(graph, mu_c, r_c, keep=feeds)
            pre = {j: (c - q, c + q) for j, (c, q) in kept.items()}
            lo, up = _crown_output(graph, mu_c, r_c, pre, spec2 if spec_c is None else spec_c)
            return tuple(t for j in feeds for t in pre[j]) + (lo, torch.maximum(up, lo))
        return pairs(chunking.chunked(run, mu.shape[0], chunk, mu, r, spec3))

    if method == "crown-forward":
        def run(mu_c, r_c, spec_c):
            s = spec2 if spec_c is None else spec_c
            (lo_f, up_f), pre = dag.crown_forward(graph, mu_c, r_c)
            lo_f, up_f = _spec_interval((lo_f + up_f) / 2, (up_f - lo_f) / 2, s) if s is not None else \
                (lo_f.flatten(1), up_f.flatten(1))
            lo_b, up_b = _crown_output(graph, mu_c, r_c, pre, s)
            return tuple(t for j in feeds for t in pre[j]) + intersect(lo_f, up_f, lo_b, up_b)
        return pairs(chunking.chunked(run, mu.shape[0], max(1, chunk // 2), mu, r, spec3))

    # full CROWN: every nonlinear node's input from CROWN's own backward pass, in order
    def run(mu_c, r_c, spec_c):
        (c, q), kept = dag.ibp(graph, mu_c, r_c, keep=feeds)
        N = mu_c.shape[0]
        rows = max(1, ROW_GROUP_BYTES // max(1, N * widest * elem * 4))
        pre = {}
        for j in feeds:
            if j not in pre:
                pre[j] = dag.crown_node(graph, j, mu_c, r_c, pre, kept[j], rows)
        lo, up = _crown_output(graph, mu_c, r_c, pre, spec2 if spec_c is None else spec_c, rows)
        if spec_c is None and spec2 is None:  # IBP's output interval is sound too
            lo, up = intersect(lo, up, (c - q).flatten(1), (c + q).flatten(1))
        return tuple(t for j in feeds for t in pre[j]) + (lo, torch.maximum(up, lo))
    grad = torch.is_grad_enabled() and (mu.requires_grad or r.requires_grad or any(
        t.requires_grad for nd in graph.nodes[1:] for t in vars(nd.op).values() if isinstance(t, Tensor)))
    return pairs(chunking.chunked(run, mu.shape[0], chunk_size or (mu.shape[0] or 1 if not grad else chunk),
                                  mu, r, spec3))


def _spec_interval(c: Tensor, q: Tensor, spec: Optional[Tensor]):
    if spec is None:
        return c.flatten(1) - q.flatten(1), c.flatten(1) + q.flatten(1)
    c, q = apply_spec_center_radius(spec, c.flatten(1), q.flatten(1))
    return c - q, c + q


def _crown_output(graph: Graph, mu: Tensor, r: Tensor, pre, spec: Optional[Tensor], rows_per_call: int = 0):
    """CROWN's backward bounds of the output (flat) or of the spec rows, in row groups."""
    N = mu.shape[0]
    rows = output_rows(graph, N, mu.dtype, mu.device, spec)
    K = rows.shape[1]
    group = rows_per_call or K or 1
    parts = [dag.crown_back(graph, len(graph.nodes) - 1, rows[:, s:s + group], mu, r, pre) for s in range(0, K, group)]
    if not parts:
        return rows.new_zeros(N, 0), rows.new_zeros(N, 0)
    return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)
