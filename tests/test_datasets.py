"""Data loading: real MNIST, and Fashion-MNIST / CIFAR-10 files written here in their exact formats."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from etbkernels import datasets as D


def test_mnist_real_file():
    x, y = D.load_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert 0 <= x.min() and x.max() <= 1 and set(y.unique().tolist()) == set(range(10))
    with pytest.raises(ValueError, match="split must be one of"):
        D.load_mnist("validation")


def _write_idx(path, array, gz=True):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.fixture
def fashion_folder(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 7), ("t10k", 5)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    return tmp_path


def test_fashion_mnist_idx(fashion_folder):
    x, y = D.load_fashion_mnist("test", fashion_folder)
    assert x.shape == (5, 1, 28, 28) and y.shape == (5,)
    raw = D.read_idx(fashion_folder / "t10k-images-idx3-ubyte.gz")
    assert np.allclose(x[:, 0].numpy(), raw / 255.0)
    assert D.load_fashion_mnist("train", fashion_folder)[0].shape[0] == 7


def test_fashion_mnist_bad_files(fashion_folder, tmp_path):
    path = fashion_folder / "t10k-images-idx3-ubyte.gz"
    data = gzip.open(path).read()
    gzip.open(path, "wb").write(data[:-100])  # truncated payload
    with pytest.raises(ValueError, match="truncated"):
        D.load_fashion_mnist("test", fashion_folder)
    gzip.open(path, "wb").write(b"\x00\x00\x0d\x03" + data[4:])  # float data: not supported
    with pytest.raises(ValueError, match="bad magic"):
        D.load_fashion_mnist("test", fashion_folder)
    path.write_bytes(gzip.compress(data)[:50])  # truncated gzip stream
    with pytest.raises(ValueError, match="cannot read"):
        D.load_fashion_mnist("test", fashion_folder)
    os.remove(path)
    with pytest.raises(FileNotFoundError, match="missing t10k-images-idx3-ubyte"):
        D.load_fashion_mnist("test", fashion_folder)


def _write_cifar_batch(path, n, rng, protocol=2):
    batch = {b"batch_label": b"testing batch", b"labels": rng.integers(0, 10, n).tolist(),
             b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), b"filenames": [b"x.png"] * n}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)
    return batch


@pytest.fixture
def cifar_folder(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        _write_cifar_batch(folder / f"data_batch_{i}", 3, rng)
    _write_cifar_batch(folder / "test_batch", 4, rng, protocol=4)
    return folder


def test_cifar10_batches(cifar_folder):
    x, y = D.load_cifar10(cifar_folder, "test")
    batch = pickle.load(open(cifar_folder / "test_batch", "rb"))
    assert x.shape == (4, 3, 32, 32) and y.tolist() == batch[b"labels"]
    assert np.allclose(x.numpy().reshape(4, -1), batch[b"data"] / 255.0)
    assert D.load_cifar10(cifar_folder, "train")[0].shape == (15, 3, 32, 32)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_cifar10_refuses_malicious_pickle(cifar_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open(cifar_folder / "test_batch", "wb") as f:
        pickle.dump({b"data": _Payload(), b"labels": [0]}, f, protocol=2)
    with pytest.raises(D.UnsafePickleError, match="refusing to load posix.system|refusing to load os.system"):
        D.load_cifar10(cifar_folder, "test")
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_cifar10_bad_input(cifar_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        D.load_cifar10(tmp_path / "nope")
    (cifar_folder / "test_batch").write_bytes((cifar_folder / "data_batch_1").read_bytes()[:40])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        D.load_cifar10(cifar_folder, "test")
    with open(cifar_folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"uint8 \(N, 3072\)"):
        D.load_cifar10(cifar_folder, "test")
    os.remove(cifar_folder / "data_batch_3")
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        D.load_cifar10(cifar_folder, "train")
