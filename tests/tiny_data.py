"""Tiny data files in the real formats, for tests that run the loaders and the command line."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def write_idx(path, array, gz: bool = True) -> None:
    """``array`` as an IDX file of unsigned bytes (the MNIST / Fashion-MNIST format), gzipped by default."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(header + np.asarray(array).astype(np.uint8).tobytes())


def fashion_folder(folder, n_train: int = 24, n_test: int = 6, seed: int = 1) -> Path:
    """A Fashion-MNIST IDX folder of random pixels and labels: the CLI runs in a fraction of a second on it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return folder


def train_tiny(fashion, out, *extra):
    """`python -m etbkernels train` of a width-8 MLP on a tiny Fashion-MNIST folder, batch 8, eps 0.1, one
    thread, no progress; ``extra`` adds or overrides options. Returns the exit status."""
    from etbkernels.cli import main
    return main(["train", "--dataset", "fashion-mnist", "--data-dir", str(fashion), "--model", "mlp",
                 "--mlp-widths", "8", "--batch-size", "8", "--threads", "1", "--no-progress", "--eps", "0.1",
                 "--out", str(out), *extra])
