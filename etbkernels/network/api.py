"""``etbkernels.bounds``: ETB or IBP bounds of a whole ReLU network over an L-inf box."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ..block import etb_block
from ..bounds_type import Bounds
from .crown_ibp import crown_backward
from .crown_forward import crown_forward, intersect
from .crown_full import crown_layers, graph_numel_per_sample
from .etb import etb_backward, etb_forward, first_stage_directions, out_rows
from .etb_tail import tail_start
from . import chunking, dag_methods
from .arguments import box, check_masks, check_options, check_params, check_spec, check_x
from .chunking import backward_chunk, forward_chunk, needs_grad, split_spec
from .ibp import ibp_stages
from .layers import LinearOp
from .build import build_graph
from .options import BoundsOptions
from .parse import Network, lower_chain



def margin_spec(labels: Tensor, num_classes: int, dtype=torch.float32) -> Tensor:
    """Specification rows ``e_y - e_j`` (j != y) for margin bounds: (N, num_classes - 1, num_classes).

    ``bounds(model, x, eps, spec=margin_spec(y, 10)).lower[:, j] > 0`` for every j says that
    the bound on ``z_y - z_j`` is positive. Folding the spec into the last layer is never looser than
    subtracting output bounds for IBP and ETB, and usually tighter for the CROWN methods (which
    relax each row on its own, so not always). ``dtype`` is the spec's (use the model's, e.g. torch.float64);
    ``bounds`` converts a spec to ``x``'s dtype anyway. ``labels``: a 1-D integer tensor of any width
    (int8 ... int64, uint8); ``num_classes``: an int (numpy integers too).
    """
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.is_floating_point() or labels.is_complex() \
            or labels.dtype == torch.bool:
        raise ValueError(f"margin_spec: labels must be a 1-D integer tensor, got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)} of shape "
                         f"{tuple(getattr(labels, 'shape', ()))}")
    from .._checks import is_integer

    if not is_integer(num_classes):  # np.int64 too
        raise TypeError(f"margin_spec: num_classes must be an int, got {type(num_classes).__name__}")
    num_classes = int(num_classes)
    if num_classes < 2:
        raise ValueError(f"margin_spec: num_classes must be >= 2, got {num_classes}")
    # any integer width: int8/int16 cannot index, and uint8 would index as a boolean mask
    labels = labels.long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"margin_spec: labels must lie in [0, {num_classes}), got min {int(labels.min())}, "
                         f"max {int(labels.max())}")
    N, K = labels.shape[0], num_classes
    eye = torch.eye(K, dtype=dtype, device=labels.device)
    others = torch.arange(K, device=labels.device).expand(N, K)
    others = others[others != labels[:, None]].reshape(N, K - 1)
    return eye[labels].unsqueeze(1) - eye[others]


def bounds(model: nn.Module, x: Tensor, eps: Union[float, Tensor], *, method: str = "etb",
           mask: Union[str, Sequence[Tensor], None] = None, center_at: Optional[str] = None,
           spec: Optional[Tensor] = None, clip: Optional[Tuple[Union[float, Tensor], Union[float, Tensor]]] = None,
           return_layers: bool = False, chunk_size: Optional[int] = None,
           options: Optional[BoundsOptions] = None) -> Union[Bounds, Tuple[Bounds, List[Bounds]]]:
    """Bounds of ``model(x')`` (or of ``spec @ model(x')``) for every x' in the L-inf box ``x +- eps``.

    Sound methods: ``method="ibp"`` (interval bound propagation); ``"crown-ibp"`` (a backward
    linear relaxation on IBP's pre-activation bounds: tighter at the output, ~2x the cost of
    ETB's ``mask="ibp"``); ``"crown-forward"`` (CROWN's forward mode: every layer tighter than
    IBP, ~3x the cost of ETB's ``mask="etb"``; see docs/networks.md); ``"crown"`` (full CROWN:
    every layer's interval from CROWN's own backward pass, one row per neuron; the tightest sound
    method here on networks not trained for IBP, and by far the slowest: 125-1,700x IBP on the
    small and medium CNN, so meant for evaluation on small batches). ``method="etb"`` gives
    Expected Tight Bounds: **expected bounds, not certificates** -- much tighter than IBP, but an
    attack may find outputs outside them; never report them as verified.

    Args:
        model: an ``nn.Sequential`` (nested allowed) of Linear, Conv2d (stride, padding, dilation,
            groups; zero padding), ReLU, Flatten, eval-mode BatchNorm1d/2d, AvgPool2d, Dropout and
            Identity (treated as the identity), and :class:`~etbkernels.network.Normalize`. Any
            other layer raises ValueError naming it.
        x: (N, *input shape) float32/float64 inputs, in the units of the model's input (raw pixels
            when the model starts with a Normalize layer); same dtype/device as the model.
        eps: box radius >= 0: a number or a tensor broadcastable to ``x``.
        method: "etb" (default), "ibp", "crown-ibp" (:mod:`.crown_ibp`), "crown-forward"
            (:mod:`.crown_forward`) or "crown" (:mod:`.crown_full`).
        mask: ETB only. "etb" (default): each ReLU's mask comes from ETB's own upper bound of the
            prefix ending there (blockwise scheme); "ibp": from IBP's upper bound (the authors'
            release); or a list of 0/1 tensors, one (N, *pre-activation shape) per ReLU.
        center_at: ETB only. "output" (default): intervals centred on the network's real
            pre-activations/outputs at the box centre, f_k(mu) (what the authors' training loss
            uses, and far less often violated by attacks: see docs/networks.md); "linear": on
            the masked linearization T_k(mu). The same masks give the same radius |J_k| r; with
            mask="etb" the masks come from the centred upper bounds, so they (and the radius) can differ.
        spec: optional (N, K, outputs) or (K, outputs) matrix C; the result bounds ``C @ output``
            with C folded into the last layer (see :func:`margin_spec`).
        clip: optional (low, high) valid input range: the box becomes
            ``[max(x - eps, low), min(x + eps, high)]``.
        return_layers: also return the bounds of every ReLU's pre-activation (IBP's for
            ``method="crown-ibp"``: the ones its relaxation uses; CROWN's own for ``"crown"``).
        chunk_size: samples processed together (not IBP; default: chosen so the largest per-chunk
            tensors stay near ``DEFAULT_CHUNK_BYTES`` = 1 GiB, and on CPU, for the forward
            (``mask="etb"``, ``"crown-forward"``) path, near a third of ``CPU_CACHE_CHUNK_BYTES``
            = 32 MiB, a last-level cache (twice that with gradients); ``"crown"`` bounds its memory by row groups instead, and takes the
            whole batch at once unless gradients flow).
            With gradients enabled, chunks are checkpointed so memory stays bounded in backward
            too (with ETB's default chunks only those beyond what the memory target can keep).
        options: :class:`~etbkernels.network.BoundsOptions`: how the bounds are computed (the lazy
            tail, full CROWN's windows), never their value; for A/B benchmarks and debugging.

    Returns:
        :class:`~etbkernels.Bounds` of the model's output shape (N, *output shape), or (N, K)
        with a spec; with ``return_layers``, a
        tuple ``(output bounds, [pre-activation bounds of each ReLU, in layer shape])``.
        Differentiable in x, eps and the model's parameters (the masks carry no gradient).

    Cost (ETB): ``mask="ibp"`` without ``return_layers`` forms only the K output rows, backward
    (~K backward passes; CROWN-IBP: 2K rows, a lower and an upper bound each). ``mask="etb"``
    (or ``return_layers``) needs every layer's bound and pushes the n input directions forward
    (~n forward passes per sample; CROWN forward: two such sets); a single hidden layer MLP uses
    the fused ``etb_block`` kernel instead. Without ``return_layers``, ``mask="etb"`` forms in the
    trailing Linear layers only the rows whose masks are undecided (:mod:`.etb_tail`).
    """
    mask, center_at = check_options(method, mask, center_at, chunk_size)
    x = check_x(x)
    mu, r = box(x, eps, clip)
    if not isinstance(model, nn.Module):
        raise TypeError(f"bounds: model must be an nn.Module, got {type(model).__name__}")
    if options is not None and not isinstance(options, BoundsOptions):
        raise TypeError(f"bounds: options must be a BoundsOptions or None, got {type(options).__name__}")
    check_params(model, x)
    graph = build_graph(model, x)
    net = lower_chain(graph)
    if net is None:  # branches, concatenations or max-pool: the graph walkers
        shaped = graph
        spec = check_spec(spec, graph, x)
        layers = _graph_layers(graph, mu, r, method, mask, center_at, spec, chunk_size)
    else:
        shaped = net
        if options is not None:
            net.options = options
        if net.relu_first:  # ReLU applied to the input box: exact
            up, lo = torch.relu(mu + r), torch.relu(mu - r)
            mu, r = (up + lo) / 2, (up - lo) / 2
        spec = check_spec(spec, net, x)
        layers = _chain_layers(net, mu, r, method, mask, center_at, spec, return_layers, chunk_size)
    out = layers[-1]
    if spec is None:  # every method in the model's output shape (some work on flat rows)
        shape = (x.shape[0],) + tuple(shaped.out_shape)
        out = Bounds(out.lower.reshape(shape), out.upper.reshape(shape))
    if shaped.relu_last:
        out = Bounds(torch.relu(out.lower), torch.relu(out.upper))
    if return_layers:
        return out, layers[:-1]
    return out


def _chain_layers(net: Network, mu, r, method, mask, center_at, spec, return_layers, chunk_size) -> List[Bounds]:
    """A chain of layers: the chain methods."""
    if method == "ibp":
        return ibp_stages(net, mu, r, spec)
    if method == "crown-ibp":
        return _crown_ibp(net, mu, r, spec, chunk_size)
    if method == "crown-forward":
        return _crown_forward(net, mu, r, spec, chunk_size)
    if method == "crown":
        return _crown_full(net, mu, r, spec, chunk_size)
    return _etb(net, mu, r, mask, center_at, spec, return_layers, chunk_size)


def _graph_layers(graph, mu, r, method, mask, center_at, spec, chunk_size) -> List[Bounds]:
    """A model with branches, concatenations or max-pool: the graph walkers (:mod:`.dag_methods`)."""
    given = None
    if method == "etb" and not isinstance(mask, str):
        if not all(graph.nodes[i].op.takes_mask for i in graph.nonlinear()):
            raise ValueError("bounds: a list of masks is for models whose only nonlinearity is ReLU; this one has "
                             "max-pool (use mask='etb' or 'ibp')")
        given = check_masks(mask, graph, mu)
    return dag_methods.bounds(graph, mu, r, method, mask, center_at, spec, chunk_size, given)


# ---------------------------------------------------------------------------------- ETB driver
def _etb(net: Network, mu, r, mask, center_at, spec, return_layers, chunk_size) -> List[Bounds]:
    N = mu.shape[0]
    given = None
    if not isinstance(mask, str):
        given = check_masks(mask, net, mu)
    elif mask == "ibp":
        given = [(b.upper > 0).to(mu.dtype).detach() for b in ibp_stages(net, mu, r)[:-1]]

    fused = _try_fused(net, mu, r, given, center_at, spec)
    if fused is not None:
        return fused

    elem = mu.element_size()
    spec2, spec3 = split_spec(spec)
    masks = list(given) if given is not None else []

    if given is not None and not return_layers:
        # output rows only: pull K rows backward
        chunk = chunk_size or backward_chunk(net, spec, 1, elem)

        def run(mu_c, r_c, spec_c, *masks_c):
            return etb_backward(net, mu_c, r_c, center_at, masks_c, spec2 if spec_c is None else spec_c)

        c, rad = chunking.chunked(run, N, chunk, mu, r, spec3, *masks)
        return [Bounds.from_center_radius(c, rad)]

    first = first_stage_directions(net, mu.dtype, mu.device)
    grad = needs_grad(net, mu, r)
    # with gradients, a chunk's whole graph (every layer's tensors) is alive in backward
    chunk = chunk_size or forward_chunk(net, grad, elem, mu.device)

    def run(mu_c, r_c, spec_c, *masks_c, record=None):
        res = etb_forward(net, mu_c, r_c, first, center_at, masks_c if given is not None else None,
                          spec2 if spec_c is None else spec_c, output_only=not return_layers, record=record)
        return tuple(t for cr in (res if return_layers else res[-1:]) for t in cr)

    # with the default chunks, as many samples' graphs as the memory target allows skip the checkpoint
    tail = tail_start(net, out_rows(net, spec)) if given is None else None
    keep = 0 if chunk_size or not grad or return_layers else chunking.kept_samples(net, elem, tail)
    # a checkpointed chunk's recomputation replays the masks its forward decided
    flat = chunking.chunked(run, N, chunk, mu, r, spec3, *masks, keep=keep, record=not return_layers)
    return [Bounds.from_center_radius(flat[2 * k], flat[2 * k + 1]) for k in range(len(flat) // 2)]


def _crown_ibp(net: Network, mu, r, spec, chunk_size) -> List[Bounds]:
    pre = ibp_stages(net, mu, r)[:-1]
    return pre + [_crown_output(net, mu, r, pre, spec, chunk_size)]


def _crown_forward(net: Network, mu, r, spec, chunk_size) -> List[Bounds]:
    """CROWN's forward mode for every layer; at the output also a backward CROWN pass on the
    forward mode's hidden bounds, and the tighter of the two (both are sound)."""
    spec2, spec3 = split_spec(spec)
    first = first_stage_directions(net, mu.dtype, mu.device)
    # two sets of directions (M, Delta), each the size of ETB's: half ETB's chunk, the same bytes
    chunk = chunk_size or max(1, forward_chunk(net, needs_grad(net, mu, r), mu.element_size(), mu.device) // 2)

    def run(mu_c, r_c, spec_c):
        res = crown_forward(net, mu_c, r_c, first, spec2 if spec_c is None else spec_c)
        return tuple(t for lu in res for t in lu)

    flat = chunking.chunked(run, mu.shape[0], chunk, mu, r, spec3)
    layers = [Bounds(flat[2 * k], flat[2 * k + 1]) for k in range(len(net.stages))]
    back = _crown_output(net, mu, r, layers[:-1], spec, chunk_size)
    return layers[:-1] + [Bounds(*intersect(layers[-1].lower, layers[-1].upper, back.lower, back.upper))]


def _crown_full(net: Network, mu, r, spec, chunk_size) -> List[Bounds]:
    """Full CROWN (:mod:`.crown_full`): every layer's interval from CROWN's own backward pass."""
    spec2, spec3 = split_spec(spec)
    chunk = chunk_size
    if chunk is None:  # the row groups bound memory without a graph (one chunk: the whole batch,
        # at least 1 for an empty one); with a graph, the graph's size sets it
        chunk = max(1, mu.shape[0] if not needs_grad(net, mu, r) else
                    chunking.DEFAULT_CHUNK_BYTES // (graph_numel_per_sample(net) * mu.element_size()))

    def run(mu_c, r_c, spec_c):
        return tuple(t for lu in crown_layers(net, mu_c, r_c, spec2 if spec_c is None else spec_c) for t in lu)

    flat = chunking.chunked(run, mu.shape[0], chunk, mu, r, spec3)
    return [Bounds(flat[2 * k], flat[2 * k + 1]) for k in range(len(flat) // 2)]


def _crown_output(net: Network, mu, r, pre: List[Bounds], spec, chunk_size) -> Bounds:
    """Backward CROWN bounds of the output (or spec rows) from sound pre-activation bounds."""
    spec2, spec3 = split_spec(spec)
    chunk = chunk_size or backward_chunk(net, spec, 2, mu.element_size())  # a lower and an upper row each

    def run(mu_c, r_c, spec_c, *pre_c):
        pairs = [(pre_c[2 * i], pre_c[2 * i + 1]) for i in range(len(pre))]
        return crown_backward(net, mu_c, r_c, pairs, spec2 if spec_c is None else spec_c)

    lower, upper = chunking.chunked(run, mu.shape[0], chunk, mu, r, spec3, *[t for b in pre for t in (b.lower, b.upper)])
    # where the interval has no width (eps = 0) rounding can cross its ends by an ulp
    return Bounds(lower, torch.maximum(upper, lower))


def _try_fused(net: Network, mu, r, given, center_at, spec) -> Optional[List[Bounds]]:
    """One hidden layer MLP: the fused etb_block kernel (never materializes W2 S W1)."""
    if len(net.stages) != 2 or any(len(st) != 1 or not isinstance(st[0], LinearOp) for st in net.stages):
        return None
    if spec is not None and spec.dim() == 3:
        return None
    l1, l2 = net.stages[0][0], net.stages[1][0]
    w2, b2 = l2.weight, l2.bias
    if spec is not None:
        w2, b2 = spec @ w2, None if b2 is None else spec @ b2
    c1 = l1.forward(mu)
    r1 = l1.abs_linear(r)
    m = None if given is None else given[0]
    out = etb_block(mu, r, l1.weight, l1.bias, w2, b2, mask=m, center_at=center_at)
    return [Bounds.from_center_radius(c1, r1), out]


