"""Atomic checkpoints that load with ``torch.load(..., weights_only=True)`` and detect corruption.

:func:`save_checkpoint` stores with the state a sha256 digest of every tensor's bytes and of every
other top-level field (config, history, epoch, ...); :func:`load_checkpoint` verifies it, so a
flipped byte anywhere in the data is refused with one line naming the file and what it damaged
(which tensor, the config, ...). Checkpoints written before digests were stored still load;
:func:`load_run_checkpoint` then prints a one-line note to stderr. Writes are atomic: a failed
save (disk full, a file size limit) raises OSError naming the file and removes its temporary file.
"""
from __future__ import annotations

import hashlib
import json
import numbers
import os
import pickle
import re
import stat
import sys
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List, Tuple, Union

import torch

CHECKPOINT = "checkpoint.pt"
#: what every training checkpoint holds (see training/loop.py)
RUN_KEYS = ("config", "model", "optimizer", "scheduler", "rng", "epoch", "step", "history")
#: the key under which :func:`save_checkpoint` stores the digest, and that digest's format
DIGEST_KEY, DIGEST_FORMAT = "digest", "etbkernels-sha256-1"
#: config entries eval and --resume need, with a check of each value
_CONFIG_KEYS = ("dataset", "model", "method", "eps", "normalize", "mlp_widths")
_HISTORY_KEYS = ("epoch", "loss", "train_acc", "eps", "lr", "time_s")
_ZIP_MAGIC, _PICKLE_PROTO = b"PK\x03\x04", 0x80


class CheckpointCorruptedError(ValueError):
    """A checkpoint's content does not match the sha256 digest saved with it."""


def check_out_folder(path: Union[str, Path], option: str = "--out") -> Path:
    """Raises ValueError if ``path`` cannot be (or become) a folder: it, or a parent, is a file.

    Checked before any work starts, so a run does not load data and train first, then fail to save.
    """
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                where = "is a file" if p == path else f"is inside {p}, which is a file"
                raise ValueError(f"{option} {path} {where}, not a folder")
            break
    return path


def write_atomic(path: Union[str, Path], write: Callable[[BinaryIO], None]) -> Path:
    """Writes a file atomically: ``write(f)`` into a temporary file in the same folder, fsync,
    os.replace. A run killed while writing leaves the previous file intact (at worst a stray ``.tmp``);
    a write that fails (disk full, a file size limit, Ctrl-C) removes the temporary file and
    raises OSError naming ``path`` (Ctrl-C: KeyboardInterrupt, as it was)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError):
            text = f"{path}: cannot write: {e.strerror or e}"
            raise (OSError(e.errno, text) if e.errno else OSError(text)) from None
        raise
    return path


def write_json_atomic(path: Union[str, Path], obj) -> Path:
    """``obj`` as indented JSON, written atomically (see :func:`write_atomic`)."""
    return write_atomic(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


# ------------------------------------------------------------------------------------------ digests
def _tensors(obj, prefix: str, out: Dict[str, torch.Tensor], depth: int = 0) -> Dict[str, torch.Tensor]:
    """Every tensor in ``obj`` (nested dicts, lists, tuples) by its path, e.g. ``model/0.weight``."""
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif depth < 32 and isinstance(obj, dict):
        for k, v in obj.items():
            _tensors(v, f"{prefix}/{k}" if prefix else str(k), out, depth + 1)
    elif depth < 32 and isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _tensors(v, f"{prefix}/{i}", out, depth + 1)
    return out


def _canonical(obj, depth: int = 0) -> str:
    """A text that changes whenever a non-tensor value in ``obj`` does (tensors stand as ``T``:
    their bytes have digests of their own); floats exactly, via float.hex."""
    if depth > 32:
        return "<deep>"
    if isinstance(obj, torch.Tensor):
        return "T"
    if isinstance(obj, bool) or obj is None:
        return repr(obj)
    if isinstance(obj, float):
        return obj.hex()
    if isinstance(obj, (int, str, bytes)):
        return f"{type(obj).__name__}:{obj!r}"
    if isinstance(obj, dict):
        return "{" + ",".join(f"{_canonical(k, depth + 1)}:{_canonical(v, depth + 1)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[("[isinstance(obj, tuple)] + ",".join(_canonical(v, depth + 1) for v in obj) + "])"[isinstance(obj, tuple)]
    return f"{type(obj).__name__}:{obj!r}"


def _tensor_digest(t: torch.Tensor) -> str:
    t = t.detach().cpu()
    if t.layout != torch.strided:
        t = t.to_dense()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def state_digest(state: Dict[str, Any]) -> Dict[str, Any]:
    """The digest :func:`save_checkpoint` stores: sha256 of each tensor's dtype, shape and bytes (by
    path) and of each other top-level field's value (tensors in it stand as placeholders)."""
    return {"format": DIGEST_FORMAT,
            "tensors": {p: _tensor_digest(t) for p, t in _tensors(state, "", {}).items()},
            "fields": {str(k): hashlib.sha256(_canonical(v).encode()).hexdigest() for k, v in state.items()}}


def _field_name(key: str) -> str:
    return {"config": "the config", "history": "the training history"}.get(key, f"the field {key!r}")


def verify_digest(state: Dict[str, Any], digest, path: Union[str, Path]) -> None:
    """Raises :class:`CheckpointCorruptedError` naming ``path`` and what differs (tensors by path,
    the config, the history, other fields) unless ``state`` matches ``digest``."""
    ok = (isinstance(digest, dict) and digest.get("format") == DIGEST_FORMAT
          and isinstance(digest.get("tensors"), dict) and isinstance(digest.get("fields"), dict))
    if not ok:
        raise CheckpointCorruptedError(f"{path}: corrupted: the digest record saved with it is damaged")
    now = state_digest(state)
    bad: List[str] = []
    for kind, names in (("tensors", lambda p: f"tensor {p}"), ("fields", _field_name)):
        want, got = digest[kind], now[kind]
        bad += [names(k) + (" is missing" if k not in got else " does not match its digest" if k in want
                            else " was not saved")
                for k in list(want) + [k for k in got if k not in want] if want.get(k) != got.get(k)]
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise CheckpointCorruptedError(f"{path}: corrupted: {'; '.join(bad[:3])}{more} (sha256 digests saved with "
                                       "the checkpoint: the file changed after it was written)")


class _WriteRecorder:
    """A file's ``write`` that remembers the OSError it raised: torch.save reports a failed write
    as a RuntimeError without the reason (disk full, file too large)."""

    def __init__(self, f):
        self._f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self._f.flush()


def save_checkpoint(state: Dict[str, Any], path: Union[str, Path]) -> Path:
    """Writes ``state`` with its digest (:func:`state_digest`) to ``path`` atomically (see :func:`write_atomic`).

    ``state`` must hold only tensors and plain Python types (so weights_only loading works).
    A failed write raises OSError naming ``path`` and leaves no temporary file.
    """
    state = {k: v for k, v in state.items() if k != DIGEST_KEY}
    full = {**state, DIGEST_KEY: state_digest(state)}

    def write(f):
        sink = _WriteRecorder(f)
        try:
            torch.save(full, sink)
        except RuntimeError as e:  # torch's zip writer turns a failed write (disk full, ...) into this
            if sink.error is not None:
                raise sink.error from None
            raise OSError(f"torch.save failed: {' '.join(str(e).split())[:200]}") from None

    return write_atomic(path, write)


# ------------------------------------------------------------------------------------------ loading
def _checkpoint_file(path: Union[str, Path]) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint") from None
    except OSError as e:
        raise OSError(f"{path}: cannot access the checkpoint: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block torch.load forever
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a special file"
        raise ValueError(f"{path}: not a regular file ({kind}); pass the checkpoint.pt written by "
                         "`python -m etbkernels train`")
    if st.st_size == 0:
        raise ValueError(f"{path}: cannot load the checkpoint: the file is empty")
    return path


def _sniff(path: Path) -> None:
    """Refuses, by its first bytes, a file that is neither a zip (torch.save) nor a pickle (legacy)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise OSError(f"{path}: cannot read the checkpoint: {e.strerror or e}") from None
    if head.startswith(_ZIP_MAGIC) or head[:1] == bytes([_PICKLE_PROTO]):
        return
    text = head.lstrip()
    looks = ("JSON text" if text[:1] in (b"{", b"[") else "text" if all(32 <= b < 127 or b in b"\t\r\n" for b in head)
             else "other binary data")
    raise ValueError(f"{path}: cannot load the checkpoint: not a PyTorch checkpoint (it holds {looks}); pass "
                     "the checkpoint.pt written by `python -m etbkernels train`")


def _load(path: Union[str, Path], map_location) -> Tuple[Any, bool, Path]:
    """(state without its digest, whether it carried one, the file's path); digest verified."""
    path = _checkpoint_file(path)
    _sniff(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:
        raise ValueError(f"{path}: cannot load the checkpoint: it declares more data than fits in memory "
                         "(corrupted?)") from None
    except Exception as e:  # noqa: BLE001 - re-raised with the file named, on one line
        text = str(e)
        refused = re.search(r"GLOBAL (\S+)", text)
        if isinstance(e, pickle.UnpicklingError) and refused:
            raise ValueError(f"{path}: refused: the file needs unpickling beyond weights_only=True "
                             f"({refused.group(1)}); etbkernels checkpoints hold only tensors and plain Python "
                             "types") from None
        # torch's messages span many lines of advice; keep the line that says what went wrong
        found = re.search(r"WeightsUnpickler error: *\n*\s*(.+)", text)
        first = found.group(1) if found else next((ln.strip() for ln in text.splitlines() if ln.strip()),
                                                  type(e).__name__)
        raise ValueError(f"{path}: cannot load the checkpoint (corrupted or truncated?): "
                         f"{first.split('. ')[0].strip()}") from None
    if isinstance(state, dict) and DIGEST_KEY in state:
        digest = state.pop(DIGEST_KEY)
        verify_digest(state, digest, path)
        return state, True, path
    if isinstance(state, dict):  # a damaged key must not pass for a checkpoint without a digest
        stray = [k for k, v in state.items() if isinstance(v, dict) and v.get("format") == DIGEST_FORMAT]
        if stray:
            raise CheckpointCorruptedError(f"{path}: corrupted: the key of its digest record reads {stray[0]!r}, "
                                           f"not {DIGEST_KEY!r}")
    return state, False, path


def load_checkpoint(path: Union[str, Path], map_location="cpu") -> Dict[str, Any]:
    """Loads a checkpoint (a file, or a folder holding ``checkpoint.pt``) with ``weights_only=True``.

    A digest saved with it is verified (and removed from the returned state): any mismatch raises
    :class:`CheckpointCorruptedError` (a ValueError) naming the file and the damaged tensor or field.
    A missing file raises FileNotFoundError; anything else unloadable (empty, truncated, not a
    regular file, not a PyTorch checkpoint, needing more than weights_only unpickling) ValueError.
    """
    return _load(path, map_location)[0]


def _bad(path: Path, what: str) -> ValueError:
    return ValueError(f"{path}: {what}; pass the checkpoint.pt written by `python -m etbkernels train`")


def _check_config(path: Path, cfg: Dict) -> None:
    from .data import DATASETS, MODELS
    from .loop import METHODS

    missing = [k for k in _CONFIG_KEYS if k not in cfg]
    if missing:
        raise _bad(path, f"the checkpoint's config lacks {', '.join(map(repr, missing))}")
    for key, known in (("dataset", sorted(DATASETS)), ("model", list(MODELS)), ("method", list(METHODS))):
        if not isinstance(cfg[key], str) or cfg[key] not in known:
            raise _bad(path, f"the checkpoint's config names {key} {cfg[key]!r}, which etbkernels does not know "
                             f"(one of {', '.join(known)})")
    eps = cfg["eps"]
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 <= eps <= 1:
        raise _bad(path, f"the checkpoint's config has eps {eps!r}, not a number in [0, 1]")
    if not isinstance(cfg["normalize"], bool):
        raise _bad(path, f"the checkpoint's config has normalize {cfg['normalize']!r}, not true or false")
    widths = cfg["mlp_widths"]
    if not isinstance(widths, (list, tuple)) or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1
                                                        for w in widths):
        raise _bad(path, f"the checkpoint's config has mlp_widths {widths!r:.60}, not a list of widths >= 1")
    if cfg.get("data_dir") is not None and not isinstance(cfg["data_dir"], str):
        raise _bad(path, f"the checkpoint's config has data_dir {cfg['data_dir']!r:.60}, not a folder name")


def _expected_model(cfg: Dict) -> torch.nn.Module:
    """The model the config builds, with parameters on the meta device (shapes only, no memory)."""
    from ..network import Normalize
    from .data import DATASETS, build_model

    with torch.device("meta"):
        net = build_model(cfg["model"], cfg["dataset"], normalize=False, mlp_widths=cfg["mlp_widths"])
    if not cfg["normalize"]:
        return net
    _, _, _, mean, std = DATASETS[cfg["dataset"]]
    return torch.nn.Sequential(Normalize(mean, std), *net)  # as build_model nests it


def _check_tensors(path: Path, state: Dict, cfg: Dict) -> None:
    """The weights (and optimizer state, RNG state) fit the model the config builds."""
    model = _expected_model(cfg)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    weights = state["model"]
    where = f"the {cfg['model']} model its config builds for {cfg['dataset']}"
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise _bad(path, "its model weights are not a dict of tensors")
    missing, extra = [k for k in want if k not in weights], [k for k in weights if k not in want]
    if missing or extra:
        raise _bad(path, f"its model weights do not fit {where}: "
                         + ", ".join([f"missing {k}" for k in missing[:3]] + [f"unexpected {k}" for k in extra[:3]]))
    for k, shape in want.items():
        if tuple(weights[k].shape) != shape or not weights[k].is_floating_point():
            raise _bad(path, f"its model weights do not fit {where}: {k} is {weights[k].dtype} "
                             f"{tuple(weights[k].shape)}, expected a float tensor of shape {shape}")
    opt = state["optimizer"]
    if isinstance(opt, dict) and opt.get("state"):
        params = [tuple(p.shape) for p in model.parameters()]
        per = opt["state"]
        if not isinstance(per, dict):
            raise _bad(path, "its optimizer state is malformed")
        for i, entry in per.items():
            if not isinstance(i, int) or not 0 <= i < len(params) or not isinstance(entry, dict):
                raise _bad(path, f"its optimizer state names parameter {i!r}, but the model has {len(params)}")
            for name, t in entry.items():
                if isinstance(t, torch.Tensor) and t.dim() and tuple(t.shape) != params[i]:
                    raise _bad(path, f"its optimizer state {name} of parameter {i} is {tuple(t.shape)}, but the "
                                     f"parameter is {params[i]}")
    rng = state["rng"]
    if isinstance(rng, dict) and "torch" in rng:
        t, n = rng["torch"], torch.get_rng_state().numel()
        if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.numel() != n:
            raise _bad(path, f"its RNG state is not a uint8 tensor of {n} bytes")


def _check_progress(path: Path, state: Dict) -> None:
    for key in ("epoch", "step"):
        v = state[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise _bad(path, f"its {key} is {v!r:.40}, not an integer >= 0")
    hist = state["history"]
    if not isinstance(hist, list):
        raise _bad(path, "its training history is not a list")
    for i, h in enumerate(hist):
        if not isinstance(h, dict) or not all(isinstance(h.get(k), numbers.Real) and not isinstance(h.get(k), bool)
                                              for k in _HISTORY_KEYS):
            raise _bad(path, f"its training history entry {i} lacks numbers for {', '.join(_HISTORY_KEYS)}")


def load_run_checkpoint(path: Union[str, Path], map_location="cpu") -> Dict[str, Any]:
    """:func:`load_checkpoint`, then checks that it is an etbkernels training checkpoint that fits
    the model its config builds: the config's entries (known dataset, model and method; eps,
    normalize, mlp_widths), the shapes of the weights (and of the optimizer and RNG state when
    present), epoch, step and history. Anything else raises ValueError naming the file.

    A checkpoint without a digest (written before digests were stored) loads, with a one-line
    note on stderr that its corruption cannot be detected.
    """
    state, had_digest, file = _load(path, map_location)
    missing = [k for k in RUN_KEYS if k not in state] if isinstance(state, dict) else list(RUN_KEYS)
    if missing or not isinstance(state.get("config"), dict):
        raise ValueError(f"{path}: not an etbkernels training checkpoint (missing {', '.join(missing) or 'config'}); "
                         "pass the checkpoint.pt written by `python -m etbkernels train`")
    for key in ("model", "optimizer", "scheduler", "rng"):
        if not isinstance(state[key], dict):
            raise _bad(file, f"its {key} entry is {type(state[key]).__name__}, not a dict")
    _check_config(file, state["config"])
    _check_tensors(file, state, state["config"])
    _check_progress(file, state)
    if not had_digest:
        print(f"etbkernels: note: {file} carries no sha256 digest (written before digests were stored), so "
              "corruption in it cannot be detected; a new save adds one", file=sys.stderr)
    return state
