"""Drop-in modules for robust training: wrap an existing ``nn.Sequential``, keep its forward.

Change one line of a training script::

    import etbkernels.nn as enn
    model = enn.BoundedModel(model, eps=0.1, clip=(0.0, 1.0))   # was: model = model
    logits = model(x)                                           # the model's own forward, unchanged
    b = model.bounds(x)                                         # ETB bounds of the logits (x +- 0.1)
    m = model.bounds(x, labels=y)                               # bounds of the margins z_y - z_j, j != y
    loss, logits = model.robust_loss(x, y)                      # ETB release loss (see docs/math.md)
    loss, logits = model.robust_loss(x, y, method="crown-ibp", loss="ibp_paper", beta=0.5)  # CROWN-IBP training
    loss.backward()

``method="ibp"`` gives sound IBP bounds instead (``"crown-ibp"``, ``"crown-forward"``, ``"crown"``:
sound and tighter; see docs/networks.md). **ETB bounds are expected bounds, not certificates**: use them to
train and to report "ETB-expected" robustness, never as verified accuracy (only the sound
methods' margins are). ``eps`` is in the units of the model's *input*: put an
:class:`etbkernels.Normalize` first in the model and give eps in pixels; the box is then
scaled by 1/std inside the bound computation.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attacks import pgd_attack
from .bounds_type import Bounds
from .losses import etb_attack_loss, etb_release_loss, ibp_paper_loss, interpolated_margin_lower
from .network.arguments import METHODS
from .network.api import bounds as _bounds
from .network.api import margin_spec

__all__ = ["BoundedModel", "LOSSES"]

#: Robust losses understood by :meth:`BoundedModel.robust_loss`.
LOSSES = ("release", "ibp_paper", "etb_attack", "pgd")


class BoundedModel(nn.Module):
    """A model whose ``forward`` is the wrapped model's own, which also exposes ETB/IBP bounds.

    Args:
        model: an ``nn.Sequential`` that :func:`etbkernels.bounds` accepts (Linear, Conv2d, ReLU,
            Flatten, eval BatchNorm, AvgPool2d, Normalize, ...).
        method: "etb" (default; expected bounds, not certificates), or one of the sound methods
            "ibp", "crown-ibp", "crown-forward", "crown" (see :func:`etbkernels.bounds`).
        eps: default L-inf radius in the model's input units (None: must be given per call).
        mask, center_at: ETB options passed to :func:`etbkernels.bounds` (None: its defaults;
            ``mask="ibp"`` is the authors' release and the fastest ETB variant).
        clip: valid input range, e.g. ``(0.0, 1.0)`` for pixels, or None.

    Example::

        >>> import torch, etbkernels
        >>> from etbkernels.nn import BoundedModel
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8), torch.nn.ReLU(),
        ...                           torch.nn.Linear(8, 3))
        >>> bm = BoundedModel(net, eps=0.05)
        >>> x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 2])
        >>> bm(x).shape                       # the model's own forward
        torch.Size([2, 3])
        >>> logits, b = bm(x, return_bounds=True)
        >>> bool((b.lower <= b.upper).all())
        True
        >>> bm.bounds(x, labels=y).lower.shape   # margins z_y - z_j, j != y
        torch.Size([2, 2])
    """

    def __init__(self, model: nn.Module, *, method: str = "etb", eps: Optional[float] = None,
                 mask: Optional[str] = None, center_at: Optional[str] = None,
                 clip: Optional[Tuple[float, float]] = None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"BoundedModel: model must be an nn.Module (an nn.Sequential for bounds), got "
                            f"{type(model).__name__}")
        if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float, Tensor))):
            raise TypeError(f"BoundedModel: eps must be a number, a tensor or None, got {type(eps).__name__}")
        if method not in METHODS:
            raise ValueError(f"BoundedModel: method must be one of {METHODS}, got {method!r}")
        if isinstance(eps, (int, float)) and not eps >= 0:
            raise ValueError(f"BoundedModel: eps must be >= 0, got {eps}")
        if method != "etb" and (mask is not None or center_at is not None):
            raise ValueError("BoundedModel: mask and center_at apply to method='etb' only")
        self.model = model
        self.method, self.eps, self.mask, self.center_at, self.clip = method, eps, mask, center_at, clip

    def forward(self, x: Tensor, *, return_bounds: bool = False, eps: Optional[float] = None,
                labels: Optional[Tensor] = None) -> Union[Tensor, Tuple[Tensor, Bounds]]:
        """``model(x)``; with ``return_bounds=True``, ``(model(x), self.bounds(x, eps, labels=labels))``."""
        logits = self.model(x)
        if not return_bounds:
            return logits
        return logits, self.bounds(x, eps, labels=labels)

    def _eps(self, eps) -> float:
        eps = self.eps if eps is None else eps
        if eps is None:
            raise ValueError("BoundedModel: no eps given (pass eps= here or to the constructor)")
        return eps

    def bounds(self, x: Tensor, eps: Optional[float] = None, *, labels: Optional[Tensor] = None,
               method: Optional[str] = None, num_classes: Optional[int] = None, **kwargs) -> Bounds:
        """Bounds of the logits over ``x +- eps`` (or, with ``labels``, of the margins ``z_y - z_j``, j != y).

        ``method`` overrides the wrapper's method for this call; extra keyword arguments go to
        :func:`etbkernels.bounds` (e.g. ``chunk_size``).
        """
        self._check_own_call()
        method = self.method if method is None else method
        spec = None
        if labels is not None:
            if not isinstance(labels, Tensor) or labels.shape != x.shape[:1]:
                raise ValueError(f"BoundedModel.bounds: labels must be a tensor of shape ({x.shape[0]},) (one per "
                                 f"sample of x), got {tuple(getattr(labels, 'shape', ())) or type(labels).__name__}")
            if num_classes is None:
                with torch.no_grad():
                    num_classes = self.model(x[:1]).shape[-1]
            spec = margin_spec(labels, num_classes, dtype=x.dtype)
        opts = dict(kwargs)
        if method == "etb":
            if self.mask is not None:
                opts.setdefault("mask", self.mask)
            if self.center_at is not None:
                opts.setdefault("center_at", self.center_at)
        return _bounds(self.model, x, self._eps(eps), method=method, spec=spec, clip=self.clip, **opts)

    def _check_own_call(self) -> None:
        """The bounds describe ``self.model``: refuse a wrapper whose call computes something else."""
        for attr, kind in (("_forward_pre_hooks", "forward pre-hook"), ("_forward_hooks", "forward hook")):
            if getattr(self, attr):
                raise ValueError(f"BoundedModel: a {kind} is registered on the wrapper: it changes bm(x) but not "
                                 "the bounds, which describe bm.model; remove it (handle.remove())")
        if type(self).forward is not BoundedModel.forward:
            raise ValueError(f"BoundedModel: {type(self).__name__} overrides forward, so bm(x) may differ from "
                             "bm.model(x), which the bounds describe; put the computation in the wrapped model")

    def robust_loss(self, x: Tensor, y: Tensor, eps: Optional[float] = None, *, loss: str = "release",
                    method: Optional[str] = None, lam: float = 1.0, temperature: float = 1.0, kappa: float = 0.5,
                    beta: Optional[float] = None, penalty: float = 1.0, attack_steps: int = 10,
                    attack_step_size: Optional[float] = None, seed: int = 0) -> Tuple[Tensor, Tensor]:
        """``(loss, logits)`` with the wrapper's bounds (or ``method``'s, for this call) over ``x +- eps``.

        - ``loss="release"``: the ETB authors' loss, ``CE(f(x)) + lam * CE(z~ / (T max|z~|))`` with
          z~ from the logits' radius (centre: the real output f(x));
        - ``loss="ibp_paper"``: ``kappa * CE(f(x)) + (1 - kappa) * CE(z~)`` with z~ from lower
          bounds of the margins (Gowal et al.). With ``beta`` the margin lower bound is
          ``beta * (method's) + (1 - beta) * IBP's`` (:func:`~etbkernels.losses.interpolated_margin_lower`):
          ``method="crown-ibp"`` gives CROWN-IBP training (Zhang et al. 2020), ``method="etb"``
          the ``etb-interp`` training of docs/training.md;
        - ``loss="etb_attack"``: :func:`~etbkernels.losses.etb_attack_loss`: the IBP-paper loss on
          ``min(lower, attacked margin)`` plus ``penalty * mean relu(lower - attacked margin)``,
          the attacked margins taken at a PGD point (``attack_steps`` steps);
        - ``loss="pgd"``: adversarial training (Madry et al.): ``CE(f(x_adv), y)`` at a PGD point;
          no bounds are computed, and the returned logits are f(x) without gradient.

        The attacks (``pgd_attack``: random start from ``seed``, step ``attack_step_size``, default
        ``max(2.5 eps / steps, eps / 4)``, inside ``clip``) run with the model in eval mode (its mode is
        restored after), and their point is a constant of the loss (no gradient through the attack).
        With eps = 0 the bound computation still runs (radius 0), so gradients stay consistent; the
        attack is skipped (its point is x).
        """
        if loss not in LOSSES:
            raise ValueError(f"BoundedModel.robust_loss: loss must be one of {LOSSES}, got {loss!r}")
        if beta is not None and (loss != "ibp_paper" or not 0.0 <= beta <= 1.0):
            raise ValueError(f"BoundedModel.robust_loss: beta must be in [0, 1] and goes with loss='ibp_paper' only, "
                             f"got beta={beta} with loss={loss!r}")
        if method is not None and method not in METHODS:
            raise ValueError(f"BoundedModel.robust_loss: method must be one of {METHODS}, got {method!r}")
        if loss == "pgd":
            x_adv = self._attack(x, y, eps, attack_steps, attack_step_size, seed)
            with torch.no_grad():
                logits = self.model(x)
            return F.cross_entropy(self.model(x_adv), y), logits
        logits = self.model(x)
        K = logits.shape[-1]
        if loss == "release":
            b = self.bounds(x, eps, method=method)
            return etb_release_loss(logits, b.radius, y, lam=lam, temperature=temperature), logits
        if loss == "etb_attack":
            lower = self._margin_lower(x, y, eps, method, K)
            z = self.model(self._attack(x, y, eps, attack_steps, attack_step_size, seed))
            attacked = z.gather(1, y[:, None]) - z  # z_y - z_j at the attack point; 0 at j = y
            return etb_attack_loss(logits, lower, attacked, y, kappa=kappa, penalty=penalty), logits
        if beta is None or beta == 1:
            lower = self._margin_lower(x, y, eps, method, K)
        elif beta == 0:
            lower = self._margin_lower(x, y, eps, "ibp", K)
        else:
            lower = interpolated_margin_lower(self._margin_lower(x, y, eps, method, K),
                                              self._margin_lower(x, y, eps, "ibp", K), beta)
        return ibp_paper_loss(logits, lower, y, kappa=kappa), logits

    def _margin_lower(self, x: Tensor, y: Tensor, eps, method: Optional[str], K: int) -> Tensor:
        """Lower bounds of the margins z_y - z_j as (N, K) in class order, 0 at j = y."""
        m = self.bounds(x, eps, labels=y, num_classes=K, method=method)
        # margins come as (N, K-1) for j != y; put them back in class order with 0 at y
        others = torch.arange(K, device=y.device).expand(len(y), K)
        others = others[others != y[:, None]].reshape(len(y), K - 1)
        return torch.zeros(len(y), K, dtype=m.lower.dtype, device=m.lower.device).scatter(1, others, m.lower)

    def _attack(self, x: Tensor, y: Tensor, eps, steps: int, step_size: Optional[float], seed: int) -> Tensor:
        """A PGD point of x +- eps (inside ``clip``), found with the model in eval mode; x itself at eps 0."""
        e = self._eps(eps)
        if isinstance(e, Tensor):
            if e.numel() != 1:
                raise ValueError("BoundedModel.robust_loss: the attack losses need one eps for the batch, got a "
                                 f"tensor of shape {tuple(e.shape)}")
            e = float(e)
        if e == 0 or steps == 0:
            return x.detach()
        was = self.model.training
        self.model.eval()
        try:
            x_adv, _ = pgd_attack(self.model, x, y, e, steps=steps, step_size=step_size, clip=self.clip, seed=seed)
        finally:
            self.model.train(was)
        return x_adv

    def extra_repr(self) -> str:
        return f"method={self.method!r}, eps={self.eps}, mask={self.mask!r}, center_at={self.center_at!r}, clip={self.clip}"
