"""Drop-in modules for robust training: wrap an existing ``nn.Sequential``, keep its forward.

Change one line of a training script::

    import etbkernels.nn as enn
    model = enn.BoundedModel(model, eps=0.1, clip=(0.0, 1.0))   # was: model = model
    logits = model(x)                                           # the model's own forward, unchanged
    b = model.bounds(x)                                         # ETB bounds of the logits (x +- 0.1)
    m = model.bounds(x, labels=y)                               # bounds of the margins z_y - z_j, j != y
    loss, logits = model.robust_loss(x, y)                      # ETB release loss (see docs/math.md)
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
from torch import Tensor, nn

from .bounds_type import Bounds
from .losses import etb_release_loss, ibp_paper_loss
from .network.arguments import METHODS
from .network.api import bounds as _bounds
from .network.api import margin_spec

__all__ = ["BoundedModel", "LOSSES"]

#: Robust losses understood by :meth:`BoundedModel.robust_loss`.
LOSSES = ("release", "ibp_paper")


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
                    lam: float = 1.0, temperature: float = 1.0, kappa: float = 0.5) -> Tuple[Tensor, Tensor]:
        """``(loss, logits)`` with the wrapper's bounds over ``x +- eps``.

        - ``loss="release"``: the ETB authors' loss, ``CE(f(x)) + lam * CE(z~ / (T max|z~|))`` with
          z~ from the logits' radius (centre: the real output f(x));
        - ``loss="ibp_paper"``: ``kappa * CE(f(x)) + (1 - kappa) * CE(z~)`` with z~ from lower
          bounds of the margins (Gowal et al.).
        With eps = 0 both still run the bound computation (radius 0), so gradients stay consistent.
        """
        if loss not in LOSSES:
            raise ValueError(f"BoundedModel.robust_loss: loss must be one of {LOSSES}, got {loss!r}")
        logits = self.model(x)
        K = logits.shape[-1]
        if loss == "release":
            b = self.bounds(x, eps)
            return etb_release_loss(logits, b.radius, y, lam=lam, temperature=temperature), logits
        m = self.bounds(x, eps, labels=y, num_classes=K)
        # margins come as (N, K-1) for j != y; put them back in class order with 0 at y
        others = torch.arange(K, device=y.device).expand(len(y), K)
        others = others[others != y[:, None]].reshape(len(y), K - 1)
        full = torch.zeros_like(logits).scatter(1, others, m.lower)
        return ibp_paper_loss(logits, full, y, kappa=kappa), logits

    def extra_repr(self) -> str:
        return f"method={self.method!r}, eps={self.eps}, mask={self.mask!r}, center_at={self.center_at!r}, clip={self.clip}"
