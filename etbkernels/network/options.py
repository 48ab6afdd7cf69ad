"""Options of ``etbkernels.bounds`` that change how a bound is computed, never its value."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BoundsOptions:
    """Ways of computing the same bounds, for A/B benchmarks and debugging (``bounds(..., options=...)``).

    Args:
        lazy_tail: ETB with ``mask="etb"`` (output bounds only): in the trailing Linear layers, form
            only the Jacobian rows of the ReLUs whose mask is undecided and of the outputs
            (:mod:`.etb_tail`), where a flop estimate says that is cheaper. False: every layer's full
            directions.
        conv_windows: full CROWN (``method="crown"``): pull the rows of convolutional layers back
            on their receptive windows (:mod:`.crown_windows`). False: as dense images.
    """

    lazy_tail: bool = True
    conv_windows: bool = True

    def __post_init__(self):
        for name in ("lazy_tail", "conv_windows"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"BoundsOptions: {name} must be a bool, got {type(getattr(self, name)).__name__}")
