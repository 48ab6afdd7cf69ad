"""Library internals the benchmarks use (bench/). UNSTABLE: not part of the public API.

Names here may change or go without notice; nothing outside bench/ (and its tests) should import
this module. It exists so that the benchmarks touch the library's private parts in one place:
when the network package is restructured, this file changes and the benchmarks do not.

- ``forward_chunk``, ``memory_chunk``: samples per chunk of ``bounds(mask="etb")``'s forward
  path (the cache-sized CPU rule, and the 1 GiB memory rule alone), for a parsed network.
- ``forward_numel_per_sample``: the largest per-sample tensor of that forward path.
- ``tail_start``: the stage where the lazy tail of ETB's trailing Linear layers starts (None: none).
- ``profile_stages``: the functions whose time bench/profile_network.py reports.
- ``triton_launch``: the Triton radius kernels' launch with any product precision (bench/triton_sweep.py).
"""
from __future__ import annotations

from typing import Callable, Dict

from .network import etb as _etb
from .network import patches as _patches
from .network.chunking import forward_chunk, memory_chunk
from .network.etb import forward_numel_per_sample
from .network.etb_tail import tail_start

__all__ = ["forward_chunk", "memory_chunk", "forward_numel_per_sample", "tail_start",
           "profile_stages", "triton_launch"]


def profile_stages() -> Dict[str, Callable]:
    """{stage: function} of the network code whose time bench/profile_network.py attributes (by
    code object, with a profiler: nothing is wrapped or replaced). The patches (convolutional)
    forward path: ``apply`` (the patches convolution), ``radius``, ``mask``, ``to_directions``
    (to dense), ``flatten_linear_directions`` (Flatten+Linear straight from patches); and
    ``_pull_back``, the K-row pull-back of ``mask="ibp"``."""
    stages = {name: getattr(_patches, name)
              for name in ("apply", "radius", "mask", "to_directions", "flatten_linear_directions")}
    stages["_pull_back"] = _etb._pull_back
    return stages


def triton_launch(*args, **kwargs):
    """``etbkernels.triton_radius._launch``: one launch of the Triton radius kernel, with the
    ``precision`` of its float32 products ("tf32", "ieee" or "tf32x3"; the public ``tc_radius``
    offers the first two). Imported on call: the module needs Triton only when it runs."""
    from .triton_radius import _launch

    return _launch(*args, **kwargs)
