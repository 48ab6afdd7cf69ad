"""Bound propagation through a traced graph with branches, concatenations or max-pool (:mod:`.build`).

The walkers here know no operator type: affine ops answer ``forward`` / ``linear`` / ``abs_linear`` /
``transpose_inputs``, nonlinear ones (ReLU, max-pool) ``ibp`` / ``choose`` / ``etb`` / ``crown_back`` /
``crown_fwd`` (:mod:`.graph_ops`). Chains of layers take the faster chain methods instead
(:mod:`.parse`); on a chain both give the same bounds (tests/test_network_dag.py).

- :func:`ibp`: every node's interval.
- :func:`etb`: ETB, the masked linearization's Jacobian pushed forward as dense input directions
  (``D`` (N, n, *shape), scaled by r); at a ReLU or max-pool the choice comes from the upper ends
  of its input: ETB's own (``mask="etb"``) or IBP's (``mask="ibp"``), or given masks.
- :func:`crown_back`: CROWN's backward pass from any node's rows to the input, with sound bounds on
  every nonlinear node's input (IBP's for CROWN-IBP; CROWN's own for full CROWN).
- :func:`crown_forward`: CROWN's forward mode, linear bounds in the input pushed forward.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .build import Graph
from .crown_forward import intersect
from .directions import spec_directions, spec_values
from .layers import numel

CR = Tuple[Tensor, Tensor]


def _last_use(graph: Graph) -> List[int]:
    """For each node, the index of the last node that reads it (itself if none): its value can go then."""
    last = list(range(len(graph.nodes)))
    for i, node in enumerate(graph.nodes):
        for j in node.inputs:
            last[j] = max(last[j], i)
    last[-1] = len(graph.nodes)
    return last


def _free(vals: Dict[int, object], last: List[int], i: int, node) -> None:
    for j in node.inputs:
        if last[j] == i:
            vals.pop(j, None)


def _apply(op, fn: str, args: Sequence[Tensor], lead: int) -> Tensor:
    """``op.<fn>`` on batches with ``lead`` leading dimensions (samples, directions or rows)."""
    head = args[0].shape[:lead]
    flat = [a.reshape((-1,) + tuple(s)) for a, s in zip(args, op.in_shapes)]
    out = getattr(op, fn)(*flat)
    return out.reshape(tuple(head) + tuple(op.out_shape))


def ibp(graph: Graph, mu: Tensor, r: Tensor, keep: Sequence[int] = ()) -> Tuple[CR, Dict[int, CR]]:
    """IBP (centre, radius) of the output, and of the nodes in ``keep``."""
    vals: Dict[int, CR] = {0: (mu, r)}
    kept: Dict[int, CR] = {}
    last = _last_use(graph)
    for i, node in enumerate(graph.nodes[1:], start=1):
        ins = [vals[j] for j in node.inputs]
        if node.op.affine:
            vals[i] = (_apply(node.op, "forward", [c for c, _ in ins], 1),
                       _apply(node.op, "abs_linear", [q for _, q in ins], 1))
        else:
            vals[i] = node.op.ibp(*ins[0])
        if i in keep:
            kept[i] = vals[i]
        _free(vals, last, i, node)
    return vals[len(graph.nodes) - 1], kept


def nonlinear_inputs(graph: Graph) -> List[int]:
    """The node feeding each ReLU / max-pool, in order (its bounds are what the methods relax)."""
    return [graph.nodes[i].inputs[0] for i in graph.nonlinear()]


def etb(graph: Graph, mu: Tensor, r: Tensor, center_at: str, upper_ends: Optional[Dict[int, Tensor]] = None,
        given: Optional[Sequence[Tensor]] = None, spec: Optional[Tensor] = None) -> Tuple[CR, List[CR]]:
    """ETB (centre, radius) of the output and of every nonlinear node's input, for one chunk.

    The choice at a ReLU / max-pool comes from ``given`` (one mask per nonlinear node), else from
    ``upper_ends[input node]`` (IBP's upper ends: ``mask="ibp"``), else from ETB's own
    ``centre + radius`` of its input (``mask="etb"``).
    """
    n = numel(graph.in_shape)
    eye = torch.eye(n, dtype=mu.dtype, device=mu.device).reshape((1, n) + tuple(graph.in_shape))
    vals: Dict[int, Tuple[Tensor, Tensor]] = {0: (mu, eye * r.unsqueeze(1))}
    pre: List[CR] = []
    last = _last_use(graph)
    k = 0
    for i, node in enumerate(graph.nodes[1:], start=1):
        ins = [vals[j] for j in node.inputs]
        op = node.op
        if op.affine:
            vals[i] = (_apply(op, "forward", [z for z, _ in ins], 1), _apply(op, "linear", [d for _, d in ins], 2))
        else:
            (z, D), j = ins[0], node.inputs[0]
            rad = D.abs().sum(1)
            pre.append((z, rad))
            if given is not None:
                choice = given[k]
            else:
                choice = op.choose(upper_ends[j] if upper_ends is not None else z + rad)
            vals[i] = op.etb(z, D, choice, center_at)
            k += 1
        _free(vals, last, i, node)
    z, D = vals[len(graph.nodes) - 1]
    if spec is not None:
        D, z = spec_directions(D.flatten(2), spec), spec_values(z.flatten(1), spec)
    return (z, D.abs().sum(1)), pre


def crown_back(graph: Graph, start: int, rows: Tensor, mu: Tensor, r: Tensor, bounds: Dict[int, CR]) -> CR:
    """Sound (lower, upper) of ``rows . node[start]`` over the box, each (N, K): CROWN's backward pass.

    ``rows``: (N, K, *shape of node start). ``bounds[j]``: (lower, upper) of every node j feeding a
    nonlinear node the pass goes through.
    """
    N, K = rows.shape[0], rows.shape[1]
    A: Dict[int, Tuple[Tensor, Tensor]] = {start: (rows, rows)}
    bias_lo = rows.new_zeros(N, K)
    bias_up = rows.new_zeros(N, K)
    for i in range(start, 0, -1):
        if i not in A:
            continue
        node = graph.nodes[i]
        A_lo, A_up = A.pop(i)
        op = node.op
        if op.affine:
            zero = [torch.zeros((1,) + tuple(s), dtype=mu.dtype, device=mu.device) for s in op.in_shapes]
            b = op.forward(*zero)[0]  # the bias the op adds, whatever its form
            bias_lo = bias_lo + (A_lo * b).flatten(2).sum(-1)
            bias_up = bias_up + (A_up * b).flatten(2).sum(-1)
            lo_in = _transpose(op, A_lo)
            up_in = _transpose(op, A_up)
            targets = list(zip(node.inputs, lo_in, up_in))
        else:
            j = node.inputs[0]
            lo, up = bounds[j]
            new_lo, b_lo, new_up, b_up = op.crown_back(A_lo, A_up, lo, up)
            bias_lo, bias_up = bias_lo + b_lo, bias_up + b_up
            targets = [(j, new_lo, new_up)]
        for j, a_lo, a_up in targets:
            if j in A:
                A[j] = (A[j][0] + a_lo, A[j][1] + a_up)
            else:
                A[j] = (a_lo, a_up)
    A_lo, A_up = A.get(0, (rows.new_zeros((N, K) + tuple(graph.in_shape)),) * 2)
    m, q = mu.flatten(1).unsqueeze(2), r.flatten(1).unsqueeze(2)
    lower = bias_lo + (A_lo.flatten(2) @ m).squeeze(2) - (A_lo.flatten(2).abs() @ q).squeeze(2)
    upper = bias_up + (A_up.flatten(2) @ m).squeeze(2) + (A_up.flatten(2).abs() @ q).squeeze(2)
    return lower, upper


def _transpose(op, A: Tensor) -> List[Tensor]:
    N, K = A.shape[0], A.shape[1]
    outs = op.transpose_inputs(A.reshape((N * K,) + tuple(op.out_shape)))
    return [o.reshape((N, K) + tuple(s)) for o, s in zip(outs, op.in_shapes)]


def unit_rows(shape, start: int, count: int, N: int, dtype, device) -> Tensor:
    """(N, count, *shape): the unit rows of neurons start .. start + count - 1."""
    n = numel(shape)
    eye = torch.zeros(count, n, dtype=dtype, device=device)
    eye[torch.arange(count), torch.arange(start, start + count)] = 1
    return eye.expand(N, count, n).reshape((N, count) + tuple(shape))


def crown_node(graph: Graph, node: int, mu: Tensor, r: Tensor, bounds: Dict[int, CR], ibp_cr: CR,
               rows_per_call: int = 256) -> CR:
    """Full CROWN's (lower, upper) of every neuron of ``node`` (node shape), intersected with IBP's."""
    N, shape = mu.shape[0], graph.nodes[node].shape
    n = numel(shape)
    los, ups = [], []
    for s in range(0, n, rows_per_call):
        rows = unit_rows(shape, s, min(rows_per_call, n - s), N, mu.dtype, mu.device)
        lo, up = crown_back(graph, node, rows, mu, r, bounds)
        los.append(lo)
        ups.append(up)
    lower = torch.cat(los, 1).reshape((N,) + tuple(shape)) if los else mu.new_zeros((N,) + tuple(shape))
    upper = torch.cat(ups, 1).reshape((N,) + tuple(shape)) if ups else mu.new_zeros((N,) + tuple(shape))
    c, q = ibp_cr
    return intersect(lower, upper, c - q, c + q)


def crown_forward(graph: Graph, mu: Tensor, r: Tensor) -> Tuple[CR, Dict[int, CR]]:
    """CROWN's forward mode: ``L x + lb <= z <= U x + ub`` for every node, each interval intersected with
    IBP's (both sound). Returns the output's (lower, upper) and those of every nonlinear node's input."""
    N, n = mu.shape[0], numel(graph.in_shape)
    eye = torch.eye(n, dtype=mu.dtype, device=mu.device).reshape((1, n) + tuple(graph.in_shape))
    eye = eye.expand((N, n) + tuple(graph.in_shape))
    zero = torch.zeros_like(mu)
    # M = (U + L) / 2, Delta = (U - L) / 2 and their offsets m, delta; IBP's (c, q) alongside
    vals = {0: (eye, torch.zeros_like(eye), zero, zero, mu, r)}
    pre: Dict[int, CR] = {}
    last = _last_use(graph)
    feeds = set(nonlinear_inputs(graph))

    def interval(v) -> CR:
        """Extremes over the box of U x + ub and L x + lb (U, L = M +- Delta), intersected with IBP's."""
        M, Dl, m, dl, c, q = v
        mf, rf = mu.flatten(1).unsqueeze(1), r.flatten(1).unsqueeze(1)  # (N, 1, n)
        U, L = (M + Dl).flatten(2), (M - Dl).flatten(2)  # (N, n, k)
        up = (mf @ U).squeeze(1) + (rf @ U.abs()).squeeze(1) + (m + dl).flatten(1)
        lo = (mf @ L).squeeze(1) - (rf @ L.abs()).squeeze(1) + (m - dl).flatten(1)
        return intersect(lo.reshape(c.shape), up.reshape(c.shape), c - q, c + q)

    for i, node in enumerate(graph.nodes[1:], start=1):
        ins = [vals[j] for j in node.inputs]
        op = node.op
        if op.affine:
            vals[i] = (_apply(op, "linear", [v[0] for v in ins], 2), _apply(op, "abs_linear", [v[1] for v in ins], 2),
                       _apply(op, "forward", [v[2] for v in ins], 1), _apply(op, "abs_linear", [v[3] for v in ins], 1),
                       _apply(op, "forward", [v[4] for v in ins], 1), _apply(op, "abs_linear", [v[5] for v in ins], 1))
        else:
            j = node.inputs[0]
            M, Dl, m, dl, c, q = ins[0]
            lo, up = pre[j] if j in pre else interval(ins[0])
            pre[j] = (lo, up)
            L, U, lb, ub = op.crown_fwd(M - Dl, M + Dl, m - dl, m + dl, lo, up)
            c2, q2 = op.ibp((lo + up) / 2, (up - lo) / 2)
            vals[i] = ((U + L) / 2, (U - L) / 2, (ub + lb) / 2, (ub - lb) / 2, c2, q2)
        if i in feeds and i not in pre:
            pre[i] = interval(vals[i])
        _free(vals, last, i, node)
    out = interval(vals[len(graph.nodes) - 1])
    return out, pre
