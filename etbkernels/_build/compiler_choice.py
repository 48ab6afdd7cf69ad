"""Which C++ compiler builds the extension (setup.py and the first-import build; pure Python, no torch import).

An extension that carries its own copy of libstdc++'s code (a compiler that links libstdc++
statically, or a GCC newer than torch's) runs that code against the libstdc++ the process has
already loaded and initialized, and the first error message an op formats segfaults. Seen on the
GPU machine: CXX=/opt/gcc/bin/g++ put std::ostream::_M_insert<long> and the locale facets
inside _C.abi3.so, and TORCH_CHECK crashed in it; /usr/bin/g++ (GCC 13, as torch) was fine.

choose_compiler() keeps the configured compiler unless it is unsafe in one of those two ways
and a safe GCC of torch's major version is installed; then it returns that one and says why.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from typing import Callable, Optional, Tuple

# std::basic_ostream<char>::_M_insert<long>: libstdc++.so exports it; a normal build only
# references it. A shared object that *defines* it carries a private libstdc++.
_OSTREAM_INSERT_LONG = "_ZNSo9_M_insertIlEERSoT_"
_PROBE_SRC = '#include <sstream>\n#include <string>\nstd::string f(long x) { std::ostringstream s; s << x; return s.str(); }\n'


def torch_gcc_major(config_text: str) -> Optional[int]:
    """The GCC major version in torch.__config__.show() ("  - GCC 13.3"), or None (e.g. clang)."""
    m = re.search(r"\bGCC (\d+)\.\d+", config_text)
    return int(m.group(1)) if m else None


def gcc_major(compiler: str) -> Optional[int]:
    """Major version of a GCC driver (g++ / gcc), or None if it is missing or is not GCC."""
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=20)
        ver = subprocess.run([compiler, "-dumpversion"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0 or ver.returncode != 0 or "clang" in out.stdout.lower():
        return None
    m = re.match(r"(\d+)", ver.stdout.strip())
    return int(m.group(1)) if m else None


def carries_private_libstdcxx(compiler: str) -> Optional[bool]:
    """Builds a tiny shared object with `compiler` and says whether it defines libstdc++'s own
    ostream code (True: unsafe), False if not, None if the probe could not run (no nm, no build)."""
    nm = shutil.which("nm")
    if nm is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, lib = os.path.join(tmp, "probe.cpp"), os.path.join(tmp, "probe.so")
        with open(src, "w") as fh:
            fh.write(_PROBE_SRC)
        try:
            built = subprocess.run([compiler, "-shared", "-fPIC", "-O1", src, "-o", lib], capture_output=True, timeout=120)
            if built.returncode != 0:
                return None
            syms = subprocess.run([nm, "-D", "--defined-only", lib], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
    return _OSTREAM_INSERT_LONG in syms.stdout


def _c_driver(cxx_path: str) -> Optional[str]:
    """The gcc beside a g++ (same directory, same suffix), if it exists."""
    d, name = os.path.split(cxx_path)
    cand = os.path.join(d, name.replace("g++", "gcc")) if "g++" in name else None
    return cand if cand and os.path.exists(cand) else None


def choose_compiler(configured: str, want_major: Optional[int], which: Callable[[str], Optional[str]] = shutil.which,
                    major_of: Callable[[str], Optional[int]] = gcc_major,
                    private_of: Callable[[str], Optional[bool]] = carries_private_libstdcxx,
                    ) -> Tuple[Optional[str], Optional[str], str]:
    """Returns (cxx, cc, message); cxx is None when the configured compiler stays.

    configured: the C++ compiler the build would use ($CXX or "c++"); want_major: torch's GCC
    major version (None: torch was not built with GCC; only the private-libstdc++ probe counts).
    """
    have = major_of(configured)
    if have is None:
        return None, None, ""  # not GCC (clang, or missing: the build reports that itself)
    reasons = []
    if want_major is not None and have > want_major:
        reasons.append(f"is GCC {have}, newer than the GCC {want_major} torch was built with")
    if private_of(configured):
        reasons.append("links its own copy of libstdc++ into shared objects")
    if not reasons:
        return None, None, ""
    why = f"{configured} " + " and ".join(reasons)
    names = ([f"g++-{want_major}"] if want_major is not None else []) + ["/usr/bin/g++", "g++", "c++"]
    for name in names:
        path = which(name)
        if not path or os.path.realpath(path) == os.path.realpath(configured):
            continue
        major = major_of(path)
        if major is None or (want_major is not None and major != want_major) or private_of(path):
            continue
        return path, _c_driver(path), (
            f"etbkernels setup: {why}: an extension built with it segfaults on its first error message. "
            f"Building with {path} (GCC {major}) instead; set ETBK_KEEP_CXX=1 to keep {configured}.")
    return None, None, (
        f"etbkernels setup: WARNING: {why}, and no safe GCC{'' if want_major is None else f' {want_major}'} was "
        f"found: the extension may segfault when it formats an error message. Install one and set CXX to it.")
