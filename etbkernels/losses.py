"""Robust training losses built on interval bounds, and the schedules that go with them.

The losses take bounds computed elsewhere (ETB, IBP or CROWN-IBP, e.g. from ``etbkernels.bounds``),
so any method trains with any loss. See docs/math.md, "Training losses", and docs/training.md
for the training methods built from them (CROWN-IBP's beta interpolation, the honest ETB variants).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def _check(logits: Tensor, y: Tensor, name: str, other: Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"{name}: logits must be (N, K), got {tuple(logits.shape)}")
    if other.shape != logits.shape:
        raise ValueError(f"{name}: bounds must have the logits' shape {tuple(logits.shape)}, got {tuple(other.shape)}")
    if y.shape != (logits.shape[0],) or y.dtype != torch.int64:
        raise ValueError(f"{name}: labels must be int64 of shape ({logits.shape[0]},), got {y.dtype} {tuple(y.shape)}")
    _check_label_range(y, logits.shape[1], name)


def _check_label_range(y: Tensor, K: int, name: str) -> None:
    # out-of-range labels would otherwise fail deep inside scatter/cross_entropy with an index error
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= K):
        raise ValueError(f"{name}: labels must lie in [0, {K}) for {K} classes, got min {int(y.min())}, "
                         f"max {int(y.max())}")


def worst_case_logits(logits: Tensor, radius: Tensor, y: Tensor) -> Tensor:
    """z~: every wrong logit raised by its radius, the true logit lowered by its radius."""
    _check(logits, y, "worst_case_logits", radius)
    if bool((radius.detach() < 0).any()):  # a negative radius would make the "worst case" better than f(x)
        raise ValueError("worst_case_logits: radius must be >= 0 (bounds' .radius), got negative entries")
    sign = torch.ones_like(logits).scatter_(1, y[:, None], -1.0)
    return logits + sign * radius


def etb_release_loss(logits: Tensor, radius: Tensor, y: Tensor, *, lam: float = 1.0, temperature: float = 1.0) -> Tensor:
    """The ETB authors' loss: ``CE(f(x), y) + lam * CE(z~ / (T * max_j |z~_j|), y)``.

    Args:
        logits: the network's output f(x) at the clean input (N, K) (the interval's centre).
        radius: the logits' bound radius (N, K) (ETB or IBP).
        y: labels (N,) int64.
        lam, temperature: the weight of the robust term and the normalization temperature T > 0.
    """
    if not temperature > 0:  # also refuses NaN
        raise ValueError(f"etb_release_loss: temperature must be > 0, got {temperature}")
    z = worst_case_logits(logits, radius, y)
    scale = temperature * z.abs().amax(1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)
    return F.cross_entropy(logits, y) + lam * F.cross_entropy(z / scale, y)


def margin_worst_logits(margin_lower: Tensor, y: Tensor) -> Tensor:
    """IBP-paper worst-case logits from lower bounds of the margins z_y - z_j (N, K): z~_j = -lower_j.

    The true class's own margin is 0 by definition, so z~_y = 0 whatever the bound says.
    """
    if margin_lower.dim() != 2 or y.shape != (margin_lower.shape[0],):
        raise ValueError(f"margin_worst_logits: need (N, K) margins and (N,) labels, got {tuple(margin_lower.shape)} "
                         f"and {tuple(y.shape)}")
    _check_label_range(y, margin_lower.shape[1], "margin_worst_logits")
    return (-margin_lower).scatter(1, y[:, None], 0.0)


def ibp_paper_loss(logits: Tensor, margin_lower: Tensor, y: Tensor, *, kappa: float) -> Tensor:
    """``kappa * CE(f(x), y) + (1 - kappa) * CE(z~, y)`` with z~ from margin lower bounds (Gowal et al.)."""
    if not 0.0 <= kappa <= 1.0:
        raise ValueError(f"ibp_paper_loss: kappa must be in [0, 1], got {kappa}")
    _check(logits, y, "ibp_paper_loss", margin_lower)
    return kappa * F.cross_entropy(logits, y) + (1 - kappa) * F.cross_entropy(margin_worst_logits(margin_lower, y), y)


def interpolated_margin_lower(tight: Tensor, ibp: Tensor, beta: float) -> Tensor:
    """``beta * tight + (1 - beta) * ibp``: a margin lower bound between a tighter method's and IBP's.

    CROWN-IBP training (Zhang et al., ICLR 2020) uses it with ``tight`` from CROWN-IBP and beta
    ramped 1 -> 0 over the eps ramp; ``etb-interp`` training uses ETB's expected lower bound as
    ``tight`` (then the result is no certificate either, unless beta is 0).

    Args:
        tight, ibp: lower bounds of the same margins, the same shape.
        beta: weight of ``tight``, in [0, 1].
    """
    if not 0.0 <= beta <= 1.0:  # also refuses NaN
        raise ValueError(f"interpolated_margin_lower: beta must be in [0, 1], got {beta}")
    if tight.shape != ibp.shape:
        raise ValueError(f"interpolated_margin_lower: the two bounds differ in shape: {tuple(tight.shape)} and "
                         f"{tuple(ibp.shape)}")
    return beta * tight + (1 - beta) * ibp


def etb_attack_loss(logits: Tensor, etb_lower: Tensor, attacked_margin: Tensor, y: Tensor, *, kappa: float,
                    penalty: float = 1.0) -> Tensor:
    """The ``etb-attack`` training loss: the IBP-paper loss on ``min(ETB lower, attacked margin)``
    plus ``penalty * mean_{i, j != y_i} relu(ETB lower - attacked margin)``.

    An ETB lower bound above a margin value the network really takes (found by an attack) is a
    measured violation of the expected bound: the minimum keeps the loss from trusting it, and
    the penalty pushes the bound back below the value (and the value up).

    Args:
        logits: f(x) (N, K).
        etb_lower: ETB lower bounds of the margins z_y - z_j, (N, K) in class order (column y: 0).
        attacked_margin: the margins z_y - z_j at an attack point in the box (N, K) (column y: 0).
        y: labels (N,) int64.
        kappa: weight of the clean CE, in [0, 1]; penalty: weight of the violation term, >= 0.
    """
    if not (math.isfinite(penalty) and penalty >= 0):
        raise ValueError(f"etb_attack_loss: penalty must be finite and >= 0, got {penalty}")
    _check(logits, y, "etb_attack_loss", etb_lower)
    if attacked_margin.shape != logits.shape:
        raise ValueError(f"etb_attack_loss: attacked margins must have the logits' shape {tuple(logits.shape)}, got "
                         f"{tuple(attacked_margin.shape)}")
    N, K = logits.shape
    if K < 2:
        raise ValueError(f"etb_attack_loss: need at least 2 classes, got {K}")
    lower = torch.minimum(etb_lower, attacked_margin)
    over = F.relu(etb_lower - attacked_margin).scatter(1, y[:, None], 0.0)  # j = y is no margin
    return ibp_paper_loss(logits, lower, y, kappa=kappa) + penalty * over.sum() / max(N * (K - 1), 1)


@dataclass(frozen=True)
class LinearRamp:
    """``start`` for ``warmup`` steps, then linear to ``end`` over ``ramp`` steps, then ``end``.

    Used for the eps (0 -> eps), kappa (1 -> 0.5) and beta (1 -> 0) schedules; steps are optimizer steps.
    """

    start: float
    end: float
    warmup: int = 0
    ramp: int = 0

    def __post_init__(self):
        if self.warmup < 0 or self.ramp < 0:
            raise ValueError(f"LinearRamp: warmup and ramp must be >= 0, got {self.warmup}, {self.ramp}")

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.start
        if self.ramp == 0 or step >= self.warmup + self.ramp:
            return self.end
        t = (step - self.warmup) / self.ramp
        return self.start + t * (self.end - self.start)
