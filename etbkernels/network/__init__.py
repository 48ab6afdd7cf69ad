"""Bounds for whole networks: the model's traced computation graph, bounded by ETB, IBP and the CROWN
family (see docs/networks.md)."""
from .api import bounds, margin_spec
from .normalize import Normalize
from .options import BoundsOptions
from .parse import Network, parse_model

__all__ = ["bounds", "margin_spec", "Normalize", "BoundsOptions", "Network", "parse_model"]
