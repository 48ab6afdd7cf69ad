"""Inner estimates of an output range by projected gradient ascent (PGD) inside an L-inf box.

Used to measure how often an ETB interval fails to contain values the network really takes
(ETB's *violation rate*): ETB bounds are expected bounds, not certificates.
"""
from __future__ import annotations

import math
from typing import Callable, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def pgd_output_range(fn: Callable[[Tensor], Tensor], lower_in: Tensor, upper_in: Tensor, *, steps: int = 30,
                     restarts: int = 1, step_frac: float = 0.25, seed: int = 0) -> Tuple[Tensor, Tensor]:
    """Lowest and highest value of every output of ``fn`` that PGD finds in the box [lower_in, upper_in].

    ``fn`` maps (B, *in) -> (B, m). Each (sample, output, direction) gets its own attack point, so
    the result is per output, not a compromise between outputs. Returns (found_min, found_max),
    each (N, m): inner estimates (found_min >= true min, found_max <= true max).
    """
    if lower_in.shape != upper_in.shape:
        raise ValueError(f"pgd_output_range: lower_in {tuple(lower_in.shape)} and upper_in {tuple(upper_in.shape)} differ")
    if (upper_in < lower_in).any() or lower_in.isnan().any() or upper_in.isnan().any():
        raise ValueError("pgd_output_range: need lower_in <= upper_in, without NaN")
    if steps < 0 or restarts < 1 or not (math.isfinite(step_frac) and step_frac >= 0):
        raise ValueError(f"pgd_output_range: need steps >= 0, restarts >= 1 and a finite step_frac >= 0, got "
                         f"{steps}, {restarts}, {step_frac}")
    N = lower_in.shape[0]
    with torch.no_grad():
        m = fn(((lower_in + upper_in) / 2)[:1]).shape[-1]
    g = torch.Generator(device="cpu").manual_seed(seed)
    def per_direction(t: Tensor) -> Tensor:  # one copy of the box per (output, direction)
        return t.unsqueeze(0).expand(2 * m, *t.shape).reshape(2 * m * N, *t.shape[1:])

    lo, hi = per_direction(lower_in), per_direction(upper_in)
    # Direction d < m maximizes output d; d >= m minimizes output d - m.
    sign = torch.cat([torch.ones(m), -torch.ones(m)]).to(lower_in)
    which = torch.arange(2 * m) % m
    step = (hi - lo) * step_frac
    best = torch.full((2 * m, N), -float("inf"), dtype=lower_in.dtype, device=lower_in.device)
    for _ in range(restarts):
        u = torch.rand(lo.shape, generator=g).to(lo)
        x = (lo + u * (hi - lo)).requires_grad_(True)
        for it in range(steps + 1):
            out = fn(x).view(2 * m, N, m)
            obj = sign[:, None] * out[torch.arange(2 * m), :, which]  # (2m, N)
            best = torch.maximum(best, obj.detach())
            if it == steps:
                break
            (grad,) = torch.autograd.grad(obj.sum(), x)
            with torch.no_grad():
                x = torch.minimum(torch.maximum(x + step * grad.sign(), lo), hi).requires_grad_(True)
    found_max = best[:m].T.contiguous()
    found_min = (-best[m:]).T.contiguous()
    return found_min, found_max


def default_step_size(eps: float, steps: int) -> float:
    """:func:`pgd_attack`'s default step: ``max(2.5 * eps / steps, eps / 4)`` (eps / 4 from 10 steps on)."""
    return max(2.5 * eps / max(steps, 1), eps / 4)


def pgd_attack(model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, eps: float, *, steps: int = 40,
               restarts: int = 1, step_size: float | None = None, clip: Tuple[float, float] | None = (0.0, 1.0),
               seed: int = 0, any_step: bool = True) -> Tuple[Tensor, Tensor]:
    """L-inf PGD against the true labels (untargeted, cross-entropy, random start, restarts).

    Args:
        model: maps inputs (N, ...) to logits (N, K).
        x, y: inputs (in the model's input units, e.g. pixels in [0, 1]) and labels (N,).
        eps: L-inf radius (>= 0) in the same units.
        steps, restarts: PGD iterations per restart and random restarts; a sample counts as
            broken if any restart breaks it.
        step_size: defaults to :func:`default_step_size`, max(2.5 * eps / steps, eps / 4):
            2.5 * eps / steps up to 10 steps, eps / 4 from then on.
        clip: valid input range the adversarial point must stay in, or None.
        seed: seed of the random starts (a CPU generator of its own; the global RNG is untouched).
        any_step: True (default): a sample counts as broken if the model misclassifies ANY point
            the attack visits (the random start and every step of every restart). False: the old
            rule, judged at the last point of each restart only (kept for comparisons; it can
            report more robust samples than the attack found counterexamples for).

    Returns:
        (x_adv, still_correct): per sample, a misclassified point where the attack found one, else
        the highest-loss correctly classified point it visited (for adversarial training); and a
        bool (N,) mask of the samples it did not break. With ``any_step`` the misclassified point
        is the highest-loss one visited; without, a restart's last point.
    """
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"pgd_attack: eps must be finite and >= 0, got {eps}")
    if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"pgd_attack: step_size must be finite and > 0, got {step_size}")
    if steps < 0 or restarts < 1:
        raise ValueError(f"pgd_attack: need steps >= 0 and restarts >= 1, got {steps}, {restarts}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"pgd_attack: x has {x.shape[0]} samples but y has {y.shape[0]}")
    step = step_size if step_size is not None else default_step_size(eps, steps)
    x = x.detach()  # the attack's points are leaves, whatever x's graph
    lo, hi = x - eps, x + eps
    if clip is not None:
        lo, hi = lo.clamp(*clip), hi.clamp(*clip)
    g = torch.Generator(device="cpu").manual_seed(seed)
    x_best = x.detach().clone()
    with torch.no_grad():
        logits = model(x)
        correct = logits.argmax(1) == y
        best_loss = F.cross_entropy(logits, y, reduction="none")  # of x_best
    best_wrong = ~correct  # any_step: x_best is a misclassified point
    for _ in range(restarts):
        u = torch.rand(x.shape, generator=g).to(x)
        xa = (lo + u * (hi - lo)).detach()
        for it in range(steps + 1):  # the last pass only scores the final point
            xa.requires_grad_(it < steps)
            with torch.set_grad_enabled(it < steps):
                logits = model(xa)
                loss = F.cross_entropy(logits, y, reduction="none")
            lossd, wrong = loss.detach(), logits.detach().argmax(1) != y
            if any_step:
                # a misclassified point beats any correct one; among equals, the higher loss wins
                better = (wrong & (~best_wrong | (lossd > best_loss))) | (~wrong & ~best_wrong & (lossd > best_loss))
                best_wrong = best_wrong | wrong
            else:
                # an unbroken sample keeps the highest-loss point seen that the model still gets right
                # (for adversarial training; a sample counts as broken by a restart's last point only)
                better = correct & (lossd > best_loss) & ~wrong
            x_best[better] = xa.detach()[better]
            best_loss = torch.where(better, lossd, best_loss)
            if it == steps:
                break
            (grad,) = torch.autograd.grad(loss.sum(), xa)
            xa = torch.minimum(torch.maximum(xa.detach() + step * grad.sign(), lo), hi)
        if not any_step:
            fooled = logits.detach().argmax(1) != y
            newly = fooled & correct
            x_best[newly] = xa.detach()[newly]
            correct &= ~fooled
    if any_step:
        correct = ~best_wrong
    return x_best, correct
