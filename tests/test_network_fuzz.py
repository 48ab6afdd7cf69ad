"""Randomized differential tests of ``bounds(model, x, eps, ...)`` on small random networks (float64).

Seeded generators (``random.Random(seed)``; a failure names its seed) build ``nn.Sequential``
models from every supported layer in random order and nesting: Linear, Conv2d (random, also
non-square, kernel, stride, padding, dilation, groups; with or without bias), ReLU (also first,
last, twice in a row, right after Flatten), Flatten, eval BatchNorm1d/2d (random running stats
and affine parameters, some negative scales, some ``affine=False``; folded or standalone),
AvgPool2d (kernel, stride, padding, ``count_include_pad``), Dropout/Identity, nested Sequentials,
two Linear or conv layers without a ReLU between, ``Normalize`` first, and models whose output is
a conv grid. Inputs: batches of 1-4, eps a number, per feature, per sample or per channel (some
entries 0), with and without ``clip=(0, 1)``, with no spec, margins, a shared or per-sample random
spec. What each test guards is in its docstring; the other network tests check fixed networks.

``ETBK_FUZZ_SEEDS=500 pytest tests/test_network_fuzz.py`` runs more seeds (default 16-40 per test).
Every test takes the ``device`` fixture (tests/conftest.py: ``ETBK_TEST_DEVICE``, default cpu):
``bounds()`` runs there, on a copy of the model, and the references stay on the CPU
(``ETBK_TEST_DEVICE=cuda`` runs the library on a GPU; skipped without one).

The bugs this file found have regression tests at its end: a model whose output is a conv grid
(no Flatten) crashed ``crown-forward`` (and full CROWN on a one-stage model), and its output shape
depended on the method; a conv neuron whose window lies in the zero padding only crashed
``mask="etb"``, ``return_layers`` and ``crown-forward``; an empty batch crashed ``mask="etb"``
where the lazy tail starts after a formed layer; CROWN-IBP's lower bound could exceed its upper
one by an ulp at eps = 0.
"""
from __future__ import annotations

import copy
import os
import random

import pytest
import torch
from torch import nn

from etbkernels import Bounds
from etbkernels.attacks import pgd_output_range
from etbkernels.network import BoundsOptions, Normalize, bounds, chunking, crown_full, crown_windows, etb, margin_spec, pullback
from etbkernels.testing import box_points
from network_ref import (blockwise_jacobian_ref, crown_forward_ref, crown_full_ref, crown_ibp_ref, masked_forward,
                         modules, per_logit_autograd)

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
SEEDS = int(os.environ.get("ETBK_FUZZ_SEEDS", "0"))
SOUND = ("ibp", "crown-ibp", "crown-forward", "crown")
ETB = [dict(method="etb", mask=m, center_at=c) for m in ("ibp", "etb") for c in ("output", "linear")]


def to_device(model: nn.Module, device) -> nn.Module:
    """The model on ``device``: the model itself on the CPU (CPU runs are unchanged), a copy elsewhere."""
    return model if str(device) == "cpu" else copy.deepcopy(model).to(device)


def _to(v, device):
    """Tensors (also inside lists and tuples) moved to ``device``; anything else as it is."""
    if isinstance(v, torch.Tensor):
        return v.to(device)
    if isinstance(v, (list, tuple)) and type(v) in (list, tuple):
        return type(v)(_to(t, device) for t in v)
    return v


def _back(res):
    """bounds()' result (Bounds, or (Bounds, layers)) moved to the CPU, where the references are."""
    if isinstance(res, Bounds):
        return Bounds(*(t.cpu() for t in (res.lower, res.upper, res.center, res.radius)))
    return _back(res[0]), [_back(b) for b in res[1]]


def bounds_on(device, model, x, eps, **kw):
    """``bounds()`` on ``device`` (``model`` already there: :func:`to_device`; every tensor argument
    moved there), its result back on the CPU. Differentiable in x, eps and the device model's parameters."""
    if str(device) == "cpu":
        return bounds(model, x, eps, **kw)
    return _back(bounds(model, _to(x, device), _to(eps, device), **{k: _to(v, device) for k, v in kw.items()}))


def seeds(default: int, offset: int):
    """Seeds for one test (disjoint across tests at the default counts, so each sees other networks)."""
    return range(offset, offset + (SEEDS or default))


# ------------------------------------------------------------------------------------ generator
def _conv_out(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _bn(rng: random.Random, C: int, two_d: bool) -> nn.Module:
    affine = rng.random() > 0.2
    m = (nn.BatchNorm2d if two_d else nn.BatchNorm1d)(C, affine=affine)
    g = torch.Generator().manual_seed(rng.randrange(1 << 30))
    with torch.no_grad():
        m.running_mean.copy_(torch.rand(C, generator=g) * 0.6 - 0.3)
        m.running_var.copy_(torch.rand(C, generator=g) * 1.5 + 0.3)
        if affine:
            sign = torch.where(torch.rand(C, generator=g) < 0.2, -1.0, 1.0)
            m.weight.copy_((torch.rand(C, generator=g) * 1.2 + 0.3) * sign)
            m.bias.copy_(torch.rand(C, generator=g) * 0.4 - 0.2)
    return m


def random_model(seed: int, grid_output: bool = True) -> tuple:
    """(model, per-sample input shape): a random float64 eval-mode ``nn.Sequential``."""
    rng = random.Random(seed)
    layers: list = []
    image = rng.random() < 0.7
    shape = (rng.randint(1, 3), rng.randint(3, 7), rng.randint(3, 7)) if image else (rng.randint(1, 7),)
    in_shape = shape
    if rng.random() < 0.4:
        ch = shape[0] if rng.random() < 0.7 else 1  # one value for every channel
        layers.append(Normalize([rng.uniform(-0.5, 0.5) for _ in range(ch)], [rng.uniform(0.2, 2) for _ in range(ch)]))
    if rng.random() < 0.08:
        layers.append(nn.ReLU())  # applied to the input box

    def filler():
        r = rng.random()
        if r < 0.08:
            layers.append(nn.Dropout(0.3))
        elif r < 0.14:
            layers.append(nn.Identity())

    def pair(lo, hi):
        a = rng.randint(lo, hi)
        return (a, rng.randint(lo, hi)) if rng.random() < 0.3 else (a, a)

    if image:
        for _ in range(rng.randint(0, 3)):
            C, H, W = shape
            if rng.random() < 0.7:
                g = rng.choice([g for g in (1, 2, 3) if C % g == 0])
                out = g * rng.randint(1, 3)
                k, s, d, p = pair(1, 3), pair(1, 2), pair(1, 2), pair(0, 2)
                if _conv_out(H, k[0], s[0], p[0], d[0]) < 1:
                    k, d = (1, k[1]), (1, d[1])
                if _conv_out(W, k[1], s[1], p[1], d[1]) < 1:
                    k, d = (k[0], 1), (d[0], 1)
                layers.append(nn.Conv2d(C, out, k, stride=s, padding=p, dilation=d, groups=g, bias=rng.random() < 0.85))
                shape = (out, _conv_out(H, k[0], s[0], p[0], d[0]), _conv_out(W, k[1], s[1], p[1], d[1]))
            else:
                k = (rng.randint(1, min(3, H)), rng.randint(1, min(3, W)))
                k = k if rng.random() < 0.3 else (min(k), min(k))
                s = None if rng.random() < 0.3 else pair(1, 3)
                p = (rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2))
                layers.append(nn.AvgPool2d(k, stride=s, padding=p, count_include_pad=any(p) or rng.random() < 0.5))
                s = k if s is None else s
                shape = (C, (H + 2 * p[0] - k[0]) // s[0] + 1, (W + 2 * p[1] - k[1]) // s[1] + 1)
            if rng.random() < 0.3:
                layers.append(_bn(rng, shape[0], True))
            filler()
            if rng.random() < 0.7:
                layers.append(nn.ReLU())
                if rng.random() < 0.05:
                    layers.append(nn.ReLU())
                if rng.random() < 0.15:
                    layers.append(_bn(rng, shape[0], True))  # not foldable: a per-channel op of its own
        if grid_output and rng.random() < 0.12:  # the output is the conv grid itself
            if not any(isinstance(m, (nn.Conv2d, nn.AvgPool2d)) for m in layers):
                layers.append(nn.Conv2d(shape[0], 2, 1))
            if rng.random() < 0.2:
                layers.append(nn.ReLU())
            return _init(nn.Sequential(*layers), seed), in_shape
        layers.append(nn.Flatten())
        shape = (shape[0] * shape[1] * shape[2],)
        if rng.random() < 0.1:
            layers.append(nn.ReLU())
    n_lin = rng.randint(0 if image else 1, 3)
    for i in range(n_lin):
        if rng.random() < 0.15:
            layers.append(_bn(rng, shape[0], False))  # folded into the Linear after it
        out = rng.randint(1, 7)
        layers.append(nn.Linear(shape[0], out, bias=rng.random() < 0.85))
        shape = (out,)
        if rng.random() < 0.2:
            layers.append(_bn(rng, out, False))
        filler()
        if i < n_lin - 1 and rng.random() < 0.85:
            layers.append(nn.ReLU())
    if n_lin == 0 and rng.random() < 0.5:
        layers.append(nn.Linear(shape[0], rng.randint(1, 5)))
    if rng.random() < 0.06:
        layers.append(nn.ReLU())
    if rng.random() < 0.4 and len(layers) > 2:
        a = rng.randrange(len(layers) - 1)
        b = rng.randint(a + 1, len(layers))
        layers = layers[:a] + [nn.Sequential(*layers[a:b])] + layers[b:]
    return _init(nn.Sequential(*layers), seed), in_shape


def _init(model: nn.Sequential, seed: int) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=F64) * (1.5 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g, dtype=F64) * 0.2)
    return model.double().eval()


class Case:
    """A random model, a batch, eps, clip and a spec (None where the model ends with a ReLU)."""

    OPTIONS = None  # BoundsOptions for every bounds() call (a test may switch a strategy off)

    def __init__(self, seed: int, spec_kinds=("none", "margin", "shared", "per_sample"), max_batch: int = 3,
                 device="cpu"):
        self.seed, self.device = seed, device
        rng = random.Random(seed * 7 + 1)
        self.model, in_shape = random_model(seed)
        self.dev_model = to_device(self.model, device)  # what bounds() runs on; the references use self.model
        N = rng.randint(1, max_batch)
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand((N,) + in_shape, generator=g, dtype=F64)
        kind = rng.random()
        if kind < 0.35:
            self.eps = rng.choice([0.0, 0.01, 0.05, 0.2])
        else:
            shape = in_shape if kind < 0.65 else (N,) + in_shape if kind < 0.85 else \
                (in_shape[0],) + (1,) * (len(in_shape) - 1)
            self.eps = torch.rand(shape, generator=g, dtype=F64) * 0.1
            if rng.random() < 0.3:
                self.eps[..., 0] = 0
        self.clip = (0.0, 1.0) if rng.random() < 0.3 else None
        mods = modules(self.model)
        self.relu_first = isinstance([m for m in mods if not isinstance(m, (nn.Dropout, nn.Identity))][0], nn.ReLU)
        self.relu_last = isinstance(mods[-1], nn.ReLU)
        with torch.no_grad():
            out = self.model(self.x)
        self.grid = out.dim() > 2
        self.K = out[0].numel()
        kind = "none" if self.relu_last else rng.choice(spec_kinds)
        if kind == "margin" and self.K < 2:
            kind = "shared"
        self.spec = None if kind == "none" else \
            margin_spec(torch.randint(0, self.K, (N,), generator=g), self.K, dtype=F64) if kind == "margin" else \
            torch.randn(rng.randint(1, 3), self.K, generator=g, dtype=F64) if kind == "shared" else \
            torch.randn(N, rng.randint(1, 3), self.K, generator=g, dtype=F64)
        # the box as bounds() forms it: the references take its centre and radius
        e = torch.as_tensor(self.eps, dtype=F64).expand_as(self.x)
        lo, hi = self.x - e, self.x + e
        if self.clip is not None:
            lo, hi = lo.clamp(min=self.clip[0]), hi.clamp(max=self.clip[1])
        self.lo, self.hi = lo, hi
        self.mu, self.r = (lo + hi) / 2, (hi - lo) / 2

    def sound_methods(self):
        return SOUND

    def variants(self):
        return [dict(method=m) for m in self.sound_methods()] + ETB

    def stage_count(self) -> int:
        return len(stage_inputs(self.model, self.x)[0])

    def bounds(self, x=None, eps=None, spec="case", **kw):
        """bounds() on this case's box, checked to come in the model's output shape (without a
        spec), then flattened to (N, K) for the comparisons."""
        x = self.x if x is None else x
        spec = self.spec if isinstance(spec, str) else spec
        res = bounds_on(self.device, self.dev_model, x, self.eps if eps is None else eps, clip=self.clip, spec=spec,
                        options=self.OPTIONS, **kw)
        b = res[0] if kw.get("return_layers") else res
        if spec is None:
            with torch.no_grad():
                want = tuple(self.model(x).shape)
            assert tuple(b.lower.shape) == tuple(b.upper.shape) == want, (kw, tuple(b.lower.shape), want)
        flat = Bounds(b.lower.flatten(1), b.upper.flatten(1), b.center.flatten(1), b.radius.flatten(1))
        return (flat, res[1]) if kw.get("return_layers") else flat


# ------------------------------------------------------------------------------------ helpers
def close(got, want, what, tol=1e-9):
    """|got - want| <= tol (1 + the largest magnitude), with equal shapes."""
    got, want = got.detach(), want.detach()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if got.numel() == 0:
        return
    scale = 1 + max(float(got.abs().max()), float(want.abs().max()))
    err = float((got - want).abs().max())
    assert err <= tol * scale, f"{what}: max difference {err:.3e} (scale {scale:.3g})"


def contains(b_lower, b_upper, y, what, tol=1e-9):
    """Every y (P, N, ...) lies in [b_lower, b_upper] (N, ...) up to tol (1 + |y|)."""
    slack = tol * (1 + y.abs())
    over = torch.maximum(b_lower.detach() - slack - y, y - b_upper.detach() - slack)
    assert bool((over <= 0).all()), f"{what}: a point escapes the bounds by {float(over.max()):.3e}"


def reference_model(model: nn.Sequential) -> nn.Sequential:
    """The same function for network_ref, flat: affine BatchNorm (weight 1, bias 0) for
    ``affine=False`` (ibp_ref reads the weight), no Dropout/Identity (identities in eval mode, but a
    module of their own for the CROWN references' spec folding), no trailing ReLUs (bounds() applies
    those to the interval)."""
    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)) and mod.weight is None:
            mod.weight = nn.Parameter(torch.ones(mod.num_features, dtype=F64))
            mod.bias = nn.Parameter(torch.zeros(mod.num_features, dtype=F64))
    mods = [mod for mod in modules(m) if not isinstance(mod, (nn.Dropout, nn.Identity))]
    while isinstance(mods[-1], nn.ReLU):
        mods = mods[:-1]
    return nn.Sequential(*mods)


def stage_inputs(model: nn.Sequential, z: torch.Tensor):
    """(inputs of the ReLUs that end a stage, output): a ReLU ends one when an affine layer came
    since the previous ReLU, and not when it is the model's last layer (as etbkernels parses)."""
    vals, affine_since = [], False
    for m in modules(model):
        if isinstance(m, nn.ReLU):
            if affine_since:
                vals.append(z)
            affine_since = False
        elif not isinstance(m, (nn.Dropout, nn.Identity)) and not (isinstance(m, nn.Flatten) and z.dim() == 2):
            affine_since = True
        z = m(z)
    if vals and not affine_since:
        vals.pop()
    return vals, z


def relu_cuts(model: nn.Sequential):
    """Prefixes of the reference model that end just before each ReLU, or None if two ReLUs meet
    (the library merges them into one stage; the references keep both)."""
    mods = modules(reference_model(model))
    cuts, prev_relu = [], False
    for i, m in enumerate(mods):
        if isinstance(m, nn.ReLU):
            if prev_relu or i == 0:
                return None
            cuts.append(nn.Sequential(*mods[:i]))
        prev_relu = isinstance(m, nn.ReLU)
    return cuts


def apply_spec(y: torch.Tensor, spec):
    """spec @ y for outputs y (..., N, K)."""
    if spec is None:
        return y
    return y @ spec.T if spec.dim() == 2 else torch.einsum("...nm,nkm->...nk", y, spec)


def with_relu_last(case: Case, center, radius):
    """Reference bounds (centre, radius) of the model without its last ReLU, through that ReLU."""
    if case.relu_last:
        return torch.relu(center - radius), torch.relu(center + radius)
    return center - radius, center + radius


# ------------------------------------------------------------------------------------ ETB vs references
@pytest.mark.parametrize("seed", seeds(40, 0))
def test_etb_equals_references(seed, device):
    """ETB on random networks, boxes (clipped too) and specs: mask="ibp" equals the per-logit autograd
    reference (output, both centres, with and without return_layers; every hidden layer equals the
    reference of the model cut before that ReLU); mask="etb" equals the dense blockwise Jacobian
    reference at the output (lazy tail or not) and at every ReLU (return_layers)."""
    case = Case(seed, device=device)
    if case.relu_first:  # bounds() takes ReLU(box) exactly; the references linearize that ReLU
        pytest.skip("model starts with a ReLU: the references treat it differently")
    ref = reference_model(case.model)
    cuts = relu_cuts(case.model)
    for center_at in ("linear", "output"):
        out_ibp = per_logit_autograd(ref, case.mu, case.r, center_at, spec=case.spec)
        layers_ibp = None if cuts is None else [per_logit_autograd(cut, case.mu, case.r, center_at) for cut in cuts]
        out_etb, layers_etb = blockwise_jacobian_ref(ref, case.mu, case.r, center_at, spec=case.spec)
        for mask, (c, r), layer_refs in (("ibp", out_ibp, layers_ibp),
                                         ("etb", out_etb, None if cuts is None else layers_etb)):
            lo, up = with_relu_last(case, c, r)
            b = case.bounds(mask=mask, center_at=center_at)
            bl, layers = case.bounds(mask=mask, center_at=center_at, return_layers=True)
            for got, how in ((b, "output only"), (bl, "return_layers")):
                close(got.lower, lo, f"mask={mask} {how} lower, {center_at}")
                close(got.upper, up, f"mask={mask} {how} upper, {center_at}")
            if layer_refs is not None:
                assert len(layers) == len(layer_refs)
                for k, (got, (c, r)) in enumerate(zip(layers, layer_refs)):
                    close(got.center.flatten(1), c, f"mask={mask} layer {k} centre, {center_at}")
                    close(got.radius.flatten(1), r, f"mask={mask} layer {k} radius, {center_at}")


@pytest.mark.parametrize("seed", seeds(24, 1000))
def test_given_masks_equal_masked_jacobian(seed, device):
    """Random 0/1 masks given as a list: the centre is the masked linearization (or the network at
    the centre) and the radius |C J| r of the masked network, by autograd, with and without
    return_layers."""
    case = Case(seed, device=device)
    _, layers = case.bounds(method="ibp", return_layers=True)
    ref = reference_model(case.model)
    if case.relu_first or not layers or relu_cuts(case.model) is None:
        pytest.skip("no hidden ReLU, or ReLUs the library merges")
    g = torch.Generator().manual_seed(seed)
    masks = [(torch.rand(l.lower.shape, generator=g) < 0.6).to(F64) for l in layers]
    xx = case.mu.clone().requires_grad_(True)
    z = apply_spec(masked_forward(ref, xx, masks, "linear").flatten(1), case.spec)
    rows = [torch.autograd.grad(z[:, j].sum(), xx, retain_graph=True)[0] for j in range(z.shape[1])]
    radius = torch.stack([(row.abs() * case.r).flatten(1).sum(1) for row in rows], 1)
    for center_at in ("linear", "output"):
        center = apply_spec(masked_forward(ref, case.mu, masks, center_at).flatten(1), case.spec)
        lo, up = with_relu_last(case, center, radius)
        for rl in (False, True):
            b = case.bounds(mask=masks, center_at=center_at, return_layers=rl)
            b = b[0] if rl else b
            close(b.lower, lo, f"given masks lower, {center_at}, return_layers={rl}")
            close(b.upper, up, f"given masks upper, {center_at}, return_layers={rl}")


@pytest.mark.parametrize("seed", seeds(30, 1500))
def test_crown_methods_equal_dense_references(seed, device):
    """CROWN-IBP equals the dense per-sample backward reference (IBP's hidden intervals); CROWN's
    forward mode equals its dense reference at every ReLU and, at the output, the intersection of it
    with the backward reference on those intervals; full CROWN equals its layer-by-layer reference.
    The references fold a spec into the last module only, so with a spec the two output checks need
    a last Linear (else the library's folding into the Linear before a BatchNorm is tighter)."""
    case = Case(seed, device=device)
    if case.relu_first:
        pytest.skip("model starts with a ReLU: the references relax it")
    ref = reference_model(case.model)
    lo, up = crown_ibp_ref(ref, case.mu, case.r, case.spec)
    got = case.bounds(method="crown-ibp")
    close(got.lower, torch.relu(lo) if case.relu_last else lo, "crown-ibp lower")
    close(got.upper, torch.relu(up) if case.relu_last else up, "crown-ibp upper")
    out_too = case.spec is None or isinstance(ref[-1], nn.Linear)
    same_stages = relu_cuts(case.model) is not None
    fwd = crown_forward_ref(ref, case.mu, case.r, case.spec)
    full = crown_full_ref(ref, case.mu, case.r, case.spec)
    fwd_out = None
    if out_too:  # the forward mode's output, intersected with a backward pass on its hidden bounds
        blo, bup = crown_ibp_ref(ref, case.mu, case.r, case.spec, pre=fwd[:-1])
        fwd_out = torch.maximum(fwd[-1][0], blo), torch.minimum(fwd[-1][1], bup)
    for method, layer_refs, (lo, up) in (("crown-forward", fwd[:-1], fwd_out or (None, None)),
                                         ("crown", full[:-1], full[-1])):
        got, layers = case.bounds(method=method, return_layers=True)
        if same_stages:
            for k, (g, (l, u)) in enumerate(zip(layers, layer_refs)):
                close(g.lower.flatten(1), l, f"{method} ReLU {k} lower")
                close(g.upper.flatten(1), u, f"{method} ReLU {k} upper")
        if out_too:
            close(got.lower, torch.relu(lo) if case.relu_last else lo, f"{method} output lower")
            close(got.upper, torch.relu(up) if case.relu_last else up, f"{method} output upper")


# ------------------------------------------------------------------------------------ soundness
@pytest.mark.parametrize("seed", seeds(40, 2000))
def test_sound_methods_contain_sampled_points_and_pgd(seed, device):
    """IBP, CROWN-IBP, CROWN forward and full CROWN contain the network's output (or spec @ output)
    at random points and vertices of the (clipped) box and at PGD's extremes, and every ReLU's
    input at those points lies in its return_layers bounds; return_layers does not change the
    output bounds."""
    case = Case(seed, device=device)
    N = case.x.shape[0]
    pts = box_points(case.mu.flatten(1), case.r.flatten(1), 64, seed=seed)
    with torch.no_grad():
        hidden, y = stage_inputs(case.model, pts.reshape((-1,) + case.x.shape[1:]))
    y = apply_spec(y.reshape(64, N, -1), case.spec)
    found = None
    if case.spec is None or case.spec.dim() == 2:
        spec = case.spec
        found = pgd_output_range(lambda t: apply_spec(case.model(t).flatten(1), spec), case.lo, case.hi,
                                 steps=15, seed=seed)
    for method in case.sound_methods():
        b, layers = case.bounds(method=method, return_layers=True)
        contains(b.lower, b.upper, y, f"{method} output at sampled points")
        if found is not None:
            contains(b.lower, b.upper, torch.stack(found), f"{method} output at PGD's extremes")
        assert len(layers) == len(hidden), method
        for k, (l, h) in enumerate(zip(layers, hidden)):
            contains(l.lower, l.upper, h.reshape((64,) + tuple(l.lower.shape)), f"{method} ReLU {k} input")
        plain = case.bounds(method=method)
        close(plain.lower, b.lower, f"{method}: return_layers changes the output")
        close(plain.upper, b.upper, f"{method}: return_layers changes the output")


@pytest.mark.parametrize("seed", seeds(40, 3000))
def test_crown_methods_against_ibp(seed, device):
    """Where the docs promise it: CROWN forward and full CROWN intersect every interval with IBP's
    image of the previous one, so no layer's interval (output included) is wider than IBP's; the
    hidden intervals of CROWN-IBP are IBP's; lower <= upper for every method."""
    case = Case(seed, device=device)
    ibp, ibp_layers = case.bounds(method="ibp", return_layers=True)
    for method in case.sound_methods():
        b, layers = case.bounds(method=method, return_layers=True)
        for k, (l, i) in enumerate(zip(layers + [b], ibp_layers + [ibp])):
            assert bool((l.lower <= l.upper).all()), (method, k)
            if method in ("crown-forward", "crown"):
                tol = 1e-9 * (1 + i.lower.abs() + i.upper.abs())
                assert bool((l.lower >= i.lower - tol).all()) and bool((l.upper <= i.upper + tol).all()), \
                    f"{method} wider than IBP at layer {k}"
            elif method == "crown-ibp" and k < len(layers):
                close(l.lower, i.lower, f"crown-ibp layer {k} lower")
                close(l.upper, i.upper, f"crown-ibp layer {k} upper")
    for kw in ETB:
        b = case.bounds(**kw)
        assert bool((b.lower <= b.upper).all()) and bool((b.radius >= 0).all()), kw


# ------------------------------------------------------------------------------------ specs
@pytest.mark.parametrize("seed", seeds(30, 4000))
def test_spec_of_signed_scaled_unit_rows(seed, device):
    """A spec whose rows are d_j e_pi(j) (a permutation, positive or negative scales) gives exactly
    the transformed output bounds for every method (the row-wise bound is the bound of that output)."""
    case = Case(seed, spec_kinds=("none",), device=device)
    if case.relu_last:
        pytest.skip("a spec needs an affine last layer")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(case.K, generator=g)
    sign = torch.where(torch.rand(case.K, generator=g) < 0.5, -1.0, 1.0).to(F64)
    scale = (torch.rand(case.K, generator=g, dtype=F64) + 0.5) * sign
    S = torch.eye(case.K, dtype=F64)[perm] * scale[:, None]
    for kw in case.variants():
        b = case.bounds(**kw)
        s = case.bounds(spec=S, **kw)
        lo, up = b.lower[:, perm] * scale, b.upper[:, perm] * scale
        close(s.lower, torch.minimum(lo, up), f"{kw} lower")
        close(s.upper, torch.maximum(lo, up), f"{kw} upper")


@pytest.mark.parametrize("seed", seeds(30, 5000))
def test_spec_folding_ibp_and_etb(seed, device):
    """A random spec (shared or per sample): IBP's spec centre is C @ centre and its radius at most
    |C| @ radius (|C W| r, folded into a last Linear); ETB's centre is C @ centre (the masks do
    not depend on the spec) and its radius at most |C| @ radius (|C J| r)."""
    case = Case(seed, spec_kinds=("shared", "per_sample"), device=device)
    if case.spec is None:
        pytest.skip("the model ends with a ReLU: no spec")
    C = case.spec if case.spec.dim() == 3 else case.spec.expand(case.x.shape[0], -1, -1)
    for kw in [dict(method="ibp")] + ETB:
        b = case.bounds(spec=None, **kw)
        s = case.bounds(**kw)
        close(s.center, torch.einsum("nkm,nm->nk", C, b.center), f"{kw} spec centre")
        diff = torch.einsum("nkm,nm->nk", C.abs(), b.radius)
        assert bool((s.radius <= diff + 1e-9 * (1 + diff)).all()), f"{kw}: spec wider than differencing"


# ------------------------------------------------------------------------------------ batches, chunks, no_grad
@pytest.mark.parametrize("seed", seeds(30, 6000))
def test_batch_rows_chunks_and_no_grad_agree(seed, device):
    """For every method and centre: the last sample alone equals its row of the batch; chunk_size 1
    and 2 equal one chunk; under no_grad (masks and relaxations applied in place) the bounds and
    every return_layers interval equal those computed with a graph."""
    case = Case(seed, max_batch=4, device=device)
    N = case.x.shape[0]
    i = N - 1
    eps_i = case.eps[i:i + 1] if isinstance(case.eps, torch.Tensor) and case.eps.dim() == case.x.dim() else case.eps
    spec_i = case.spec[i:i + 1] if case.spec is not None and case.spec.dim() == 3 else case.spec
    for kw in case.variants():
        whole, layers = case.bounds(return_layers=True, **kw)
        plain = case.bounds(**kw)
        one = case.bounds(x=case.x[i:i + 1], eps=eps_i, spec=spec_i, **kw)
        close(one.lower, plain.lower[i:i + 1], f"{kw} sample {i} alone")
        close(one.upper, plain.upper[i:i + 1], f"{kw} sample {i} alone")
        for chunk in ((1, 2) if kw["method"] != "ibp" else ()):
            part = case.bounds(chunk_size=chunk, **kw)
            close(part.lower, plain.lower, f"{kw} chunk_size={chunk}")
            close(part.upper, plain.upper, f"{kw} chunk_size={chunk}")
        with torch.no_grad():
            fast = case.bounds(**kw)
            chunk = 1 if kw["method"] != "ibp" else None
            fast_rl, fast_layers = case.bounds(return_layers=True, chunk_size=chunk, **kw)
        close(fast.lower, plain.lower, f"{kw} no_grad")
        close(fast.upper, plain.upper, f"{kw} no_grad")
        close(fast_rl.lower, whole.lower, f"{kw} no_grad return_layers")
        close(fast_rl.upper, whole.upper, f"{kw} no_grad return_layers")
        for k, (a, b) in enumerate(zip(fast_layers, layers)):
            close(a.lower, b.lower, f"{kw} no_grad layer {k}")
            close(a.upper, b.upper, f"{kw} no_grad layer {k}")


@pytest.mark.parametrize("seed", seeds(20, 7000))
def test_internal_strategies_agree(seed, device, monkeypatch):
    """Strategies that must not change a bound: one image per transposed convolution, one neuron
    per full-CROWN row group and window call, dense rows instead of windows (full CROWN), the full
    forward pass instead of the lazy tail, dense directions instead of patches, and the smallest
    default chunks."""
    case = Case(seed, device=device)
    variants = case.variants()
    refs = [case.bounds(return_layers=True, **kw) for kw in variants]
    knobs = {
        "row groups of one": [(pullback, "BACKWARD_IMAGES", 1), (crown_full, "BACKWARD_IMAGES", 1),
                              (crown_full, "DENSE_GROUP_NUMEL", 1), (crown_windows, "WINDOW_CALL_NUMEL", 1)],
        "no windows": [(Case, "OPTIONS", BoundsOptions(conv_windows=False))],
        "no lazy tail": [(Case, "OPTIONS", BoundsOptions(lazy_tail=False))],
        "no patches": [(etb, "_use_patches", lambda net: False)],
        "one-sample default chunks": [(chunking, "CPU_CACHE_CHUNK_BYTES", 1), (chunking, "DEFAULT_CHUNK_BYTES", 1)],
    }
    for name, changes in knobs.items():
        with monkeypatch.context() as mp:
            for module, attr, value in changes:
                mp.setattr(module, attr, value)
            for kw, (ref, ref_layers) in zip(variants, refs):
                plain = case.bounds(**kw)
                got, layers = case.bounds(return_layers=True, **kw)
                for b in (plain, got):
                    close(b.lower, ref.lower, f"{name}: {kw}")
                    close(b.upper, ref.upper, f"{name}: {kw}")
                for k, (a, b) in enumerate(zip(layers, ref_layers)):
                    close(a.lower, b.lower, f"{name}: {kw} layer {k}")
                    close(a.upper, b.upper, f"{name}: {kw} layer {k}")


# ------------------------------------------------------------------------------------ gradients
def _with_positive_eps(case: Case) -> Case:
    """eps > 0 everywhere. Where an entry of eps is 0 the gradient in it is a one-sided choice: |J| for
    IBP, CROWN-IBP, full CROWN and ETB with IBP masks, 0 for ETB's dense directions (d|J r|/dr at
    r = 0), and for CROWN forward a share that depends on how rounding breaks the tie of its forward
    and IBP bounds, so on chunk_size too."""
    if isinstance(case.eps, torch.Tensor):
        case.eps = case.eps.clamp(min=0.01)
    return case


@pytest.mark.parametrize("seed", seeds(16, 8000))
def test_chunked_gradients_equal_whole(seed, device):
    """Gradients in x, eps and every parameter of a loss on the bounds are the same with
    chunk_size=1 (checkpointed chunks) as in one chunk, for every method."""
    case = _with_positive_eps(Case(seed, max_batch=3, device=device))
    if case.x.shape[0] < 2:
        case.x = torch.cat([case.x, case.x.flip(-1)])
        if case.spec is not None and case.spec.dim() == 3:
            case.spec = case.spec.expand(2, -1, -1).clone()
        if isinstance(case.eps, torch.Tensor) and case.eps.dim() == case.x.dim():
            case.eps = case.eps.expand(2, *case.eps.shape[1:]).clone()
    params = list(case.dev_model.parameters())
    for kw in case.variants():
        grads = []
        for chunk in (None, 1):
            case.dev_model.zero_grad()
            x = case.x.clone().requires_grad_(True)
            eps = case.eps.clone().requires_grad_(True) if isinstance(case.eps, torch.Tensor) else case.eps
            b = case.bounds(x=x, eps=eps, chunk_size=chunk, **kw)
            w = torch.linspace(-1, 1, b.upper.numel(), dtype=F64).reshape(b.upper.shape)
            ((b.upper * w).sum() + (b.lower * w.flip(-1)).square().sum()).backward()
            grads.append([x.grad] + ([eps.grad] if isinstance(eps, torch.Tensor) else []) +
                         [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params])
        for k, (a, b) in enumerate(zip(*grads)):
            close(a, b, f"{kw}: gradient {k} with chunk_size=1")


GRADCHECK_SEEDS = [9001, 9004, 9007]


@pytest.mark.parametrize("seed", GRADCHECK_SEEDS)
@pytest.mark.parametrize("kw", [dict(method=m) for m in SOUND] + ETB[::2] + [dict(method="etb", mask="etb",
                                                                                center_at="linear")],
                         ids=lambda kw: "-".join(kw.values()))
def test_gradcheck_random_network(seed, kw, device):
    """float64 gradcheck of lower and upper in x, eps and every weight and bias of a random network
    (BatchNorm, Normalize, pools and specs included) for every method."""
    rng = random.Random(seed)
    model, in_shape = random_model(seed, grid_output=False)
    model = to_device(model, device)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((2,) + in_shape, generator=g, dtype=F64).to(device).requires_grad_(True)
    eps = (torch.rand(in_shape, generator=g, dtype=F64) * 0.08 + 0.01).to(device).requires_grad_(True)
    clip = (0.0, 1.0) if rng.random() < 0.3 else None
    K = model(x).shape[1]
    spec = None if isinstance(modules(model)[-1], nn.ReLU) else \
        torch.randn(2, 2, K, generator=g, dtype=F64).to(device)
    owners = [(m, n) for m in model.modules() for n in ("weight", "bias")
              if isinstance(getattr(m, n, None), nn.Parameter)]
    values = [getattr(m, n).detach().clone().requires_grad_(True) for m, n in owners]
    for m, n in owners:
        delattr(m, n)

    def fn(x, eps, *ws):
        for (m, n), w in zip(owners, ws):
            setattr(m, n, w)
        b = bounds(model, x, eps, clip=clip, spec=spec, **kw)
        return b.lower, b.upper

    assert torch.autograd.gradcheck(fn, (x, eps, *values), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


# ------------------------------------------------------------------------------- regressions
@pytest.mark.parametrize("model", [
    lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 2)),
    lambda: nn.Sequential(nn.Conv2d(2, 3, 3)),
    lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 2), nn.ReLU()),
], ids=["two-stage", "one-stage", "relu-last"])
def test_grid_output_every_method(model, device):
    """A model whose output is a conv grid (no Flatten): every method returns the model's output
    shape (CROWN-IBP, full CROWN and mask="ibp" returned flat rows, crown-forward and one-stage full
    CROWN crashed); the sound ones contain sampled outputs, the CROWN ones lie inside IBP, and both
    ETB masks equal their references."""
    torch.manual_seed(0)
    model = model().double()
    x = torch.rand(2, 2, 6, 6, dtype=F64)
    with torch.no_grad():
        pts = box_points(x.flatten(1), torch.full_like(x.flatten(1), 0.05), 64, seed=0)
        y = model(pts.reshape((-1,) + x.shape[1:])).reshape((64,) + tuple(model(x).shape))
    dm = to_device(model, device)
    ibp = bounds_on(device, dm, x, 0.05, method="ibp")
    for kw in [dict(method=m) for m in SOUND] + ETB:
        for ret in (False, True):
            b = bounds_on(device, dm, x, 0.05, return_layers=ret, **kw)
            b = b[0] if ret else b
            assert b.lower.shape == b.upper.shape == y.shape[1:], (kw, ret, tuple(b.lower.shape))
            if kw.get("method", "etb") != "etb":
                contains(b.lower, b.upper, y, f"{kw}")
                tol = 1e-9 * (1 + ibp.lower.abs() + ibp.upper.abs())
                assert bool((b.lower >= ibp.lower - tol).all() and (b.upper <= ibp.upper + tol).all()), kw
    if not isinstance(modules(model)[-1], nn.ReLU):
        for center_at in ("linear", "output"):
            c, r = per_logit_autograd(model, x, 0.05, center_at)
            b = bounds_on(device, dm, x, 0.05, mask="ibp", center_at=center_at)
            close(b.center.flatten(1), c, "mask=ibp centre")
            close(b.radius.flatten(1), r, "mask=ibp radius")
            (c, r), _ = blockwise_jacobian_ref(model, x, 0.05, center_at)
            b = bounds_on(device, dm, x, 0.05, mask="etb", center_at=center_at)
            close(b.center.flatten(1), c, "mask=etb centre")
            close(b.radius.flatten(1), r, "mask=etb radius")


@pytest.mark.parametrize("kw", [dict(mask="etb"), dict(mask="ibp", return_layers=True), dict(method="crown-forward")],
                         ids=["etb", "ibp-return_layers", "crown-forward"])
def test_padding_only_window(kw, device):
    """Conv2d(1, 1, 1, stride=7, padding=2) on a 3x3 input has one output neuron, which sees only
    the zero padding (the patches path used to crop past the input and crash): its pre-activation is
    the bias alone, so every method gives a zero-width interval there, and the output bounds equal
    IBP's (exact here)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 1, 1, stride=7, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(1, 2)).double()
    x = torch.rand(2, 1, 3, 3, dtype=F64)
    model = to_device(model, device)
    res = bounds_on(device, model, x, 0.1, **kw)
    b, layers = res if kw.get("return_layers") else (res, None)
    ibp, ibp_layers = bounds_on(device, model, x, 0.1, method="ibp", return_layers=True)
    close(b.lower, ibp.lower, f"{kw} lower")
    close(b.upper, ibp.upper, f"{kw} upper")
    assert float((ibp.upper - ibp.lower).detach().abs().max()) == 0.0
    if layers is not None:
        close(layers[0].lower, ibp_layers[0].lower, "pre-activation lower")
        close(layers[0].upper, ibp_layers[0].upper, "pre-activation upper")


def test_empty_batch_lazy_tail(device):
    """An empty batch through ETB(mask="etb") on an MLP whose lazy tail starts at stage 1 (it
    crashed reshaping 0 elements with -1): empty (0, 2) bounds, as docs/bad_inputs.md row 29 says."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 1), nn.ReLU(), nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    b = bounds_on(device, to_device(model, device), torch.rand(0, 8, dtype=F64), 0.1)
    assert b.lower.shape == b.upper.shape == (0, 2)


def test_crown_ibp_lower_not_above_upper_at_eps_0(device):
    """CROWN-IBP at eps = 0 returned lower > upper by an ulp on about 1 in 10 random MLPs (its
    output was not intersected with anything); now lower <= upper, and both equal the network's
    output to rounding."""
    for seed in range(60):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(7, 8), nn.ReLU(), nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 3)).double()
        x = torch.rand(3, 7, dtype=F64)
        with torch.no_grad():
            b = bounds_on(device, to_device(model, device), x, 0.0, method="crown-ibp")
            y = model(x)
        assert bool((b.lower <= b.upper).all()), f"seed {seed}: min(upper - lower) = {float((b.upper - b.lower).min())}"
        close(b.lower, y, f"seed {seed} lower")
        close(b.upper, y, f"seed {seed} upper")


def test_empty_batch_other_paths(device):
    """The same empty batch on every other path gives empty (0, 2) bounds."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 1), nn.ReLU(), nn.Linear(1, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    x = torch.rand(0, 8, dtype=F64)
    model = to_device(model, device)
    for kw in [dict(method=m) for m in SOUND] + [dict(mask="ibp"), dict(mask="etb", return_layers=True)]:
        b = bounds_on(device, model, x, 0.1, **kw)
        b = b[0] if kw.get("return_layers") else b
        assert b.lower.shape == b.upper.shape == (0, 2), kw
