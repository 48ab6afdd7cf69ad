"""Bounds for whole networks: blockwise ETB and IBP through MLPs and CNNs (see docs/networks.md)."""
from .api import bounds, margin_spec
from .normalize import Normalize
from .parse import Network, parse_model

__all__ = ["bounds", "margin_spec", "Normalize", "Network", "parse_model"]
