"""``etbkernels.bounds``: ETB or IBP bounds of a whole ReLU network over an L-inf box."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .._checks import require_dense
from ..block import etb_block
from ..bounds_type import Bounds
from .crown import crown_backward
from .crown_forward import crown_forward, intersect
from .crown_full import crown_layers, graph_numel_per_sample
from .etb import etb_backward, etb_forward, first_stage_directions, forward_numel_per_sample, out_rows
from .ibp import ibp_stages
from .layers import LinearOp
from .parse import Network, parse_model

METHODS = ("etb", "ibp", "crown-ibp", "crown-forward", "crown")
MASKS = ("etb", "ibp")
CENTER_AT = ("output", "linear")
#: Memory the chunking aims at for the largest per-chunk tensors (bytes); see ``chunk_size``.
DEFAULT_CHUNK_BYTES = 1 << 30
#: On CPU the forward (``mask="etb"``) path also keeps its largest per-chunk tensor near this size,
#: so a chunk's elementwise passes and scatter-adds stay in the last-level cache: on a 2-core EPYC
#: (32 MiB L3), batch 256, the default chunks (8 samples on the small CNN, 4 on the medium) were
#: 1.9x and 1.4x faster than 1 GiB chunks (``bench/chunk_size_network.py``).
CPU_CACHE_CHUNK_BYTES = 32 << 20


def margin_spec(labels: Tensor, num_classes: int, dtype=torch.float32) -> Tensor:
    """Specification rows ``e_y - e_j`` (j != y) for margin bounds: (N, num_classes - 1, num_classes).

    ``bounds(model, x, eps, spec=margin_spec(y, 10)).lower[:, j] > 0`` for every j says that
    the bound on ``z_y - z_j`` is positive. Folding the spec into the last layer is never looser than
    subtracting output bounds for IBP and ETB, and usually tighter for the CROWN methods (which
    relax each row on its own, so not always). ``dtype`` is the spec's (use the model's, e.g. torch.float64);
    ``bounds`` converts a spec to ``x``'s dtype anyway.
    """
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.is_floating_point() or labels.is_complex() \
            or labels.dtype == torch.bool:
        raise ValueError(f"margin_spec: labels must be a 1-D integer tensor, got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)} of shape "
                         f"{tuple(getattr(labels, 'shape', ()))}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool):
        raise TypeError(f"margin_spec: num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes < 2:
        raise ValueError(f"margin_spec: num_classes must be >= 2, got {num_classes}")
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
           return_layers: bool = False, chunk_size: Optional[int] = None
           ) -> Union[Bounds, Tuple[Bounds, List[Bounds]]]:
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
        method: "etb" (default), "ibp", "crown-ibp" (:mod:`.crown`), "crown-forward"
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
            (``mask="etb"``, ``"crown-forward"``) path, near ``CPU_CACHE_CHUNK_BYTES`` = 32 MiB, a
            last-level cache; ``"crown"`` bounds its memory by row groups instead, and takes the
            whole batch at once unless gradients flow).
            With gradients enabled each chunk is checkpointed, so memory stays bounded in
            backward too.

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
    if method not in METHODS:
        raise ValueError(f"bounds: method must be one of {METHODS}, got {method!r}")
    if method != "etb" and (mask is not None or center_at is not None):
        raise ValueError("bounds: mask and center_at apply to method='etb' only")
    mask = "etb" if mask is None else mask
    center_at = "output" if center_at is None else center_at
    if center_at not in CENTER_AT:
        raise ValueError(f"bounds: center_at must be one of {CENTER_AT}, got {center_at!r}")
    if isinstance(mask, str) and mask not in MASKS:
        raise ValueError(f"bounds: mask must be one of {MASKS} or a list of tensors, got {mask!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"bounds: chunk_size must be None or an int >= 1, got {chunk_size!r}")
    x = _check_x(x)
    mu, r = _box(x, eps, clip)
    net = parse_model(model, tuple(x.shape[1:]), x)
    _check_params(model, x)
    if net.relu_first:  # ReLU applied to the input box: exact
        up, lo = torch.relu(mu + r), torch.relu(mu - r)
        mu, r = (up + lo) / 2, (up - lo) / 2
    spec = _check_spec(spec, net, x)

    if method == "ibp":
        layers = ibp_stages(net, mu, r, spec)
    elif method == "crown-ibp":
        layers = _crown_ibp(net, mu, r, spec, chunk_size)
    elif method == "crown-forward":
        layers = _crown_forward(net, mu, r, spec, chunk_size)
    elif method == "crown":
        layers = _crown_full(net, mu, r, spec, chunk_size)
    else:
        layers = _etb(net, mu, r, mask, center_at, spec, return_layers, chunk_size)
    out = layers[-1]
    if spec is None:  # every method in the model's output shape (some work on flat rows)
        shape = (x.shape[0],) + tuple(net.out_shape)
        out = Bounds(out.lower.reshape(shape), out.upper.reshape(shape))
    if net.relu_last:
        out = Bounds(torch.relu(out.lower), torch.relu(out.upper))
    if return_layers:
        return out, layers[:-1]
    return out


# ---------------------------------------------------------------------------------- ETB driver
def _etb(net: Network, mu, r, mask, center_at, spec, return_layers, chunk_size) -> List[Bounds]:
    N = mu.shape[0]
    given = None
    if not isinstance(mask, str):
        given = _check_masks(mask, net, mu)
    elif mask == "ibp":
        given = [(b.upper > 0).to(mu.dtype).detach() for b in ibp_stages(net, mu, r)[:-1]]

    fused = _try_fused(net, mu, r, given, center_at, spec)
    if fused is not None:
        return fused

    elem = mu.element_size()
    spec2, spec3 = _split_spec(spec)
    masks = list(given) if given is not None else []

    if given is not None and not return_layers:
        # output rows only: pull K rows backward
        chunk = chunk_size or _backward_chunk(net, spec, 1, elem)

        def run(mu_c, r_c, spec_c, *masks_c):
            return etb_backward(net, mu_c, r_c, center_at, masks_c, spec2 if spec_c is None else spec_c)

        c, rad = _chunked(run, N, chunk, mu, r, spec3, *masks)
        return [Bounds.from_center_radius(c, rad)]

    first = first_stage_directions(net, mu.dtype, mu.device)
    grad = _needs_grad(net, mu, r)
    # with gradients, a chunk's whole graph (every layer's tensors) is alive in backward
    chunk = chunk_size or _forward_chunk(net, grad, elem, mu.device)

    def run(mu_c, r_c, spec_c, *masks_c):
        res = etb_forward(net, mu_c, r_c, first, center_at, masks_c if given is not None else None,
                          spec2 if spec_c is None else spec_c, output_only=not return_layers)
        return tuple(t for cr in (res if return_layers else res[-1:]) for t in cr)

    flat = _chunked(run, N, chunk, mu, r, spec3, *masks)
    return [Bounds.from_center_radius(flat[2 * k], flat[2 * k + 1]) for k in range(len(flat) // 2)]


def _crown_ibp(net: Network, mu, r, spec, chunk_size) -> List[Bounds]:
    pre = ibp_stages(net, mu, r)[:-1]
    return pre + [_crown_output(net, mu, r, pre, spec, chunk_size)]


def _crown_forward(net: Network, mu, r, spec, chunk_size) -> List[Bounds]:
    """CROWN's forward mode for every layer; at the output also a backward CROWN pass on the
    forward mode's hidden bounds, and the tighter of the two (both are sound)."""
    spec2, spec3 = _split_spec(spec)
    first = first_stage_directions(net, mu.dtype, mu.device)
    # two sets of directions (M, Delta), each the size of ETB's: half ETB's chunk, the same bytes
    chunk = chunk_size or max(1, _forward_chunk(net, _needs_grad(net, mu, r), mu.element_size(), mu.device) // 2)

    def run(mu_c, r_c, spec_c):
        res = crown_forward(net, mu_c, r_c, first, spec2 if spec_c is None else spec_c)
        return tuple(t for lu in res for t in lu)

    flat = _chunked(run, mu.shape[0], chunk, mu, r, spec3)
    layers = [Bounds(flat[2 * k], flat[2 * k + 1]) for k in range(len(net.stages))]
    back = _crown_output(net, mu, r, layers[:-1], spec, chunk_size)
    return layers[:-1] + [Bounds(*intersect(layers[-1].lower, layers[-1].upper, back.lower, back.upper))]


def _crown_full(net: Network, mu, r, spec, chunk_size) -> List[Bounds]:
    """Full CROWN (:mod:`.crown_full`): every layer's interval from CROWN's own backward pass."""
    spec2, spec3 = _split_spec(spec)
    chunk = chunk_size
    if chunk is None:  # the row groups bound memory without a graph (one chunk: the whole batch,
        # at least 1 for an empty one); with a graph, the graph's size sets it
        chunk = max(1, mu.shape[0] if not _needs_grad(net, mu, r) else
                    DEFAULT_CHUNK_BYTES // (graph_numel_per_sample(net) * mu.element_size()))

    def run(mu_c, r_c, spec_c):
        return tuple(t for lu in crown_layers(net, mu_c, r_c, spec2 if spec_c is None else spec_c) for t in lu)

    flat = _chunked(run, mu.shape[0], chunk, mu, r, spec3)
    return [Bounds(flat[2 * k], flat[2 * k + 1]) for k in range(len(flat) // 2)]


def _crown_output(net: Network, mu, r, pre: List[Bounds], spec, chunk_size) -> Bounds:
    """Backward CROWN bounds of the output (or spec rows) from sound pre-activation bounds."""
    spec2, spec3 = _split_spec(spec)
    chunk = chunk_size or _backward_chunk(net, spec, 2, mu.element_size())  # a lower and an upper row each

    def run(mu_c, r_c, spec_c, *pre_c):
        pairs = [(pre_c[2 * i], pre_c[2 * i + 1]) for i in range(len(pre))]
        return crown_backward(net, mu_c, r_c, pairs, spec2 if spec_c is None else spec_c)

    lower, upper = _chunked(run, mu.shape[0], chunk, mu, r, spec3, *[t for b in pre for t in (b.lower, b.upper)])
    # where the interval has no width (eps = 0) rounding can cross its ends by an ulp
    return Bounds(lower, torch.maximum(upper, lower))


def _split_spec(spec):
    """(spec if shared (K, out) else None, spec if per sample (N, K, out) else None): the per-sample
    one is chunked with the samples."""
    if spec is None:
        return None, None
    return (spec, None) if spec.dim() == 2 else (None, spec)


def _needs_grad(net: Network, mu, r) -> bool:
    return torch.is_grad_enabled() and (mu.requires_grad or r.requires_grad or any(
        p.requires_grad for st in net.stages for op in st for p in vars(op).values() if isinstance(p, Tensor)))


def _backward_chunk(net: Network, spec, rows_per_output: int, elem: int) -> int:
    """Samples per chunk of a backward pull-back of ``rows_per_output`` x K rows (K: spec rows or
    outputs) that keeps its tensors near ``DEFAULT_CHUNK_BYTES``."""
    K = out_rows(net, spec)
    widest = max(max(_numel(op.in_shape), _numel(op.out_shape)) for st in net.stages for op in st)
    return max(1, DEFAULT_CHUNK_BYTES // max(1, 3 * rows_per_output * K * widest * elem))


def _memory_chunk(net: Network, grad: bool, elem: int) -> int:
    """Samples per chunk of :func:`etb_forward` that keep its tensors near ``DEFAULT_CHUNK_BYTES``
    (with gradients a chunk's whole graph is alive in backward)."""
    return max(1, DEFAULT_CHUNK_BYTES // max(1, 3 * forward_numel_per_sample(net, total=grad) * elem))


def _forward_chunk(net: Network, grad: bool, elem: int, device) -> int:
    """Default samples per chunk of :func:`etb_forward`: :func:`_memory_chunk`, and on CPU at most
    what keeps the largest tensor about cache-sized."""
    chunk = _memory_chunk(net, grad, elem)
    if device.type == "cpu":
        chunk = min(chunk, max(1, CPU_CACHE_CHUNK_BYTES // max(1, forward_numel_per_sample(net) * elem)))
    return chunk


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


def _chunked(fn, N: int, chunk: int, *tensors):
    """Runs ``fn`` on slices of ``chunk`` samples and concatenates; checkpoints when grads flow."""
    grad = torch.is_grad_enabled()
    outs = []
    for s in range(0, max(N, 1), chunk):  # N = 0: one call on the empty slices gives empty results
        args = [None if t is None else t[s:s + chunk] for t in tensors]
        if grad and N > chunk:
            outs.append(checkpoint(fn, *args, use_reentrant=False))
        else:
            outs.append(fn(*args))
    if isinstance(outs[0], tuple):
        return tuple(torch.cat([o[i] for o in outs]) if len(outs) > 1 else outs[0][i] for i in range(len(outs[0])))
    return torch.cat(outs) if len(outs) > 1 else outs[0]


# ---------------------------------------------------------------------------------- input checks
def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _check_x(x) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"bounds: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"bounds: x must be float32 or float64, got {x.dtype}")
    require_dense("bounds", "x", x)
    if x.dim() < 2:
        raise ValueError(f"bounds: x must be batched, (N, *input shape), got shape {tuple(x.shape)}; "
                         "use x.unsqueeze(0) for one sample")
    return x


def _box(x: Tensor, eps, clip):
    if isinstance(eps, (int, float)) and not isinstance(eps, bool):
        if not eps >= 0:
            raise ValueError(f"bounds: eps must be >= 0, got {eps}")
        eps_t = torch.full_like(x, float(eps))
    elif isinstance(eps, Tensor):
        require_dense("bounds", "eps", eps)
        if not eps.is_floating_point():
            raise TypeError(f"bounds: eps must be a floating-point tensor or a number, got {eps.dtype}")
        if eps.device != x.device:
            raise ValueError(f"bounds: eps is on {eps.device} but x is on {x.device}")
        try:
            eps_t = torch.broadcast_to(eps.to(x.dtype), x.shape)
        except RuntimeError:
            raise ValueError(f"bounds: eps of shape {tuple(eps.shape)} does not broadcast to x of shape "
                             f"{tuple(x.shape)}") from None
        if bool((eps_t.detach() < 0).any()):
            raise ValueError("bounds: eps must be >= 0 everywhere")
    else:
        raise TypeError(f"bounds: eps must be a number or a tensor, got {type(eps).__name__}")
    if clip is None:
        return x, eps_t
    if not (isinstance(clip, (tuple, list)) and len(clip) == 2):
        raise ValueError(f"bounds: clip must be a (low, high) pair, got {clip!r}")
    lo, hi = x - eps_t, x + eps_t
    lo = torch.maximum(lo, torch.as_tensor(clip[0], dtype=x.dtype, device=x.device))
    hi = torch.minimum(hi, torch.as_tensor(clip[1], dtype=x.dtype, device=x.device))
    if bool((lo.detach() > hi.detach()).any()):
        raise ValueError("bounds: the clipped box is empty somewhere (x outside the clip range by more than eps)")
    return (lo + hi) / 2, (hi - lo) / 2


def _check_params(model: nn.Module, x: Tensor) -> None:
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if p.is_floating_point() and (p.dtype != x.dtype or p.device != x.device):
            raise TypeError(f"bounds: model parameter {name} is {p.dtype} on {p.device} but x is {x.dtype} on "
                            f"{x.device}; convert one of them (e.g. model.to(x.dtype))")


def _check_spec(spec, net: Network, x: Tensor) -> Optional[Tensor]:
    if spec is None:
        return None
    if not isinstance(spec, Tensor):
        raise TypeError(f"bounds: spec must be a tensor or None, got {type(spec).__name__}")
    require_dense("bounds", "spec", spec)
    if spec.is_complex() or spec.dtype == torch.bool:
        raise TypeError(f"bounds: spec must be a real (floating-point or integer) tensor, got {spec.dtype}")
    if spec.device != x.device:
        raise ValueError(f"bounds: spec is on {spec.device} but x is on {x.device}")
    out = _numel(net.out_shape)
    ok = spec.dim() == 2 and spec.shape[1] == out or spec.dim() == 3 and spec.shape[0] == x.shape[0] \
        and spec.shape[2] == out
    if not ok:
        raise ValueError(f"bounds: spec must be (N={x.shape[0]}, K, {out}) or (K, {out}) for a model with {out} "
                         f"outputs, got shape {tuple(spec.shape)}")
    if net.relu_last:
        raise ValueError("bounds: spec needs an affine last layer, but the model ends with a ReLU")
    return spec.to(x.dtype)


def _check_masks(masks, net: Network, mu: Tensor) -> List[Tensor]:
    shapes = net.stage_shapes()[:-1]
    if not isinstance(masks, (list, tuple)) or len(masks) != len(shapes):
        raise ValueError(f"bounds: mask must be 'etb', 'ibp' or a list of {len(shapes)} tensors (one per ReLU)")
    out = []
    for i, (m, shp) in enumerate(zip(masks, shapes)):
        want = (mu.shape[0],) + tuple(shp)
        if not isinstance(m, Tensor) or tuple(m.shape) != want:
            raise ValueError(f"bounds: mask[{i}] must be a tensor of shape {want}, got "
                             f"{tuple(getattr(m, 'shape', ())) or type(m).__name__}")
        require_dense("bounds", f"mask[{i}]", m)
        if m.is_complex():
            raise TypeError(f"bounds: mask[{i}] must be bool or real, got {m.dtype}")
        if m.device != mu.device:
            raise ValueError(f"bounds: mask[{i}] is on {m.device} but x is on {mu.device}")
        m = m.detach().to(mu.dtype)
        # a fractional or NaN entry would scale a unit instead of switching it: not a mask
        if bool(((m != 0) & (m != 1)).any()):
            raise ValueError(f"bounds: mask[{i}] must hold only 0 and 1 (or be bool); it has other values (or NaN)")
        out.append(m)
    return out
