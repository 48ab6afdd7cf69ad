"""The extension's sources, flags and the CPU/CUDA choice, shared by setup.py (ahead-of-time build)
and load.py (first-import build). Pure Python: setup.py loads it by path, before torch is known."""
from __future__ import annotations

import glob
import hashlib
import os
from typing import Dict, List, Optional, Tuple

#: Py_LIMITED_API: one abi3 module serves every Python >= 3.9 (the module exports no Python API).
DEFINES: List[Tuple[str, Optional[str]]] = [("Py_LIMITED_API", "0x03090000")]
#: No -std flag: torch adds the standard its headers need (C++17 up to 2.13, C++20 from 2.14).
CXX_FLAGS = ["-O3", "-fopenmp"]
CXX_DEBUG_FLAGS = ["-O0", "-g", "-fopenmp"]
LD_FLAGS = ["-fopenmp"]
NVCC_FLAGS = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]


def cxx_flags() -> List[str]:
    """C++ flags; ETBK_DEBUG=1 builds without optimisation, with debug info."""
    return list(CXX_DEBUG_FLAGS if os.environ.get("ETBK_DEBUG", "0") == "1" else CXX_FLAGS)


def find_csrc(package_dir: str) -> Optional[str]:
    """The C++ sources: shipped inside the installed package (``_csrc``, put there by setup.py), or
    the checkout's ``csrc`` beside the package folder. None if neither exists."""
    for cand in (os.path.join(package_dir, "_csrc"), os.path.join(os.path.dirname(package_dir), "csrc")):
        if os.path.isfile(os.path.join(cand, "ops.cpp")):
            return cand
    return None


def sources(csrc: str, cuda: bool) -> List[str]:
    """Absolute paths of the files to compile: csrc/*.cpp and csrc/cpu/*.cpp, plus csrc/cuda/* for CUDA."""
    out = glob.glob(os.path.join(csrc, "*.cpp")) + glob.glob(os.path.join(csrc, "cpu", "*.cpp"))
    if cuda:
        out += glob.glob(os.path.join(csrc, "cuda", "*.cu")) + glob.glob(os.path.join(csrc, "cuda", "*.cpp"))
    return sorted(out)


def source_digest(csrc: str) -> str:
    """A short digest of every file under csrc (sources and headers) and the flags: a changed source
    or flag gives another cache folder, so a stale build is never loaded."""
    h = hashlib.sha256(repr((CXX_FLAGS, CXX_DEBUG_FLAGS, LD_FLAGS, NVCC_FLAGS, DEFINES, cxx_flags())).encode())
    for path in sorted(glob.glob(os.path.join(csrc, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            h.update(os.path.relpath(path, csrc).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:12]


def want_cuda(torch_cuda_version: Optional[str], cuda_home: Optional[str], cuda_available: bool,
              env: Dict[str, str] = os.environ) -> bool:
    """FORCE_CPU=1 builds for CPU, FORCE_CUDA=1 for CUDA (compile checks without a GPU); otherwise CUDA
    is built when torch is a CUDA build, a CUDA toolkit is found and a GPU is present."""
    if env.get("FORCE_CPU", "0") == "1":
        return False
    if env.get("FORCE_CUDA", "0") == "1":
        return True
    return torch_cuda_version is not None and cuda_home is not None and cuda_available
