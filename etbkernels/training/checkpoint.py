"""Atomic checkpoints that load with ``torch.load(..., weights_only=True)``."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Union

import torch

CHECKPOINT = "checkpoint.pt"


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
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"{path}: cannot load the checkpoint (corrupted, or not written by etbkernels?): {e}") from None
