"""Atomic checkpoints that load with ``torch.load(..., weights_only=True)``."""
from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Union

import torch

CHECKPOINT = "checkpoint.pt"
#: what every training checkpoint holds (see training/loop.py)
RUN_KEYS = ("config", "model", "optimizer", "scheduler", "rng", "epoch", "step", "history")


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
    os.replace. A run killed while writing leaves the previous file intact (at worst a stray ``.tmp``)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def write_json_atomic(path: Union[str, Path], obj) -> Path:
    """``obj`` as indented JSON, written atomically (see :func:`write_atomic`)."""
    return write_atomic(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))


def save_checkpoint(state: Dict[str, Any], path: Union[str, Path]) -> Path:
    """Writes ``state`` to ``path`` atomically (see :func:`write_atomic`).

    ``state`` must hold only tensors and plain Python types (so weights_only loading works).
    """
    return write_atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Union[str, Path], map_location="cpu") -> Dict[str, Any]:
    """Loads a checkpoint (a file, or a folder holding ``checkpoint.pt``) with ``weights_only=True``."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: cannot load the checkpoint: the file is empty")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
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


def load_run_checkpoint(path: Union[str, Path], map_location="cpu") -> Dict[str, Any]:
    """:func:`load_checkpoint`, then checks that it is an etbkernels training checkpoint (ValueError if not)."""
    state = load_checkpoint(path, map_location)
    missing = [k for k in RUN_KEYS if k not in state] if isinstance(state, dict) else list(RUN_KEYS)
    if missing or not isinstance(state.get("config"), dict):
        raise ValueError(f"{path}: not an etbkernels training checkpoint (missing {', '.join(missing) or 'config'}); "
                         "pass the checkpoint.pt written by `python -m etbkernels train`")
    return state
