"""Loads the compiled ops: the module built ahead of time (``etbkernels._C``), or else a build made at
first import against the installed torch, cached per torch version, Python and source digest.

A wheel built by plain ``pip install .`` has no compiled module: pip's isolated build environment
has no torch to compile against (docs/build.md, "Installing"). The first ``import etbkernels`` then
compiles the shipped sources with ninja, once, printing one line while it does.
"""
from __future__ import annotations

import importlib
import os
import shutil
import sys
import sysconfig

import torch

from . import compiler_choice, sources

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cache_dir(csrc: str) -> str:
    """Where the first-import build goes: ``$ETBK_CACHE_DIR``, default ``~/.cache/etbkernels``, then
    one folder per torch version, Python version and source digest."""
    root = os.environ.get("ETBK_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "etbkernels")
    tag = f"torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}-{sources.source_digest(csrc)}"
    return os.path.join(root, tag.replace("+", "_"))


def load_extension() -> None:
    """Registers the etbkernels ops with torch: imports the ahead-of-time module if there is one, or
    builds (first time) and loads the cached one. Raises ImportError with a one-line reason."""
    stale = None
    try:
        importlib.import_module("etbkernels._C")
        return
    except ModuleNotFoundError as e:
        if e.name != "etbkernels._C":
            raise
    except ImportError as e:  # there, but it does not load: built against another torch
        stale = e
    csrc = sources.find_csrc(_PACKAGE_DIR)
    if csrc is None:
        raise ImportError("etbkernels: no compiled module and no C++ sources to build one; reinstall with pip install ."
                          if stale is None else f"etbkernels: the compiled module does not load ({stale}); rebuild it "
                          f"against torch {torch.__version__}: pip install --no-build-isolation .") from None
    if stale is not None:
        print(f"etbkernels: the compiled module does not load with torch {torch.__version__} (built for another "
              "version?); using a first-import build instead", file=sys.stderr)
    _build_and_load(csrc)


def _build_and_load(csrc: str) -> None:
    from torch.utils import cpp_extension

    cuda = sources.want_cuda(torch.version.cuda, cpp_extension.CUDA_HOME, torch.cuda.is_available())
    out = cache_dir(csrc) + ("-cuda" if cuda else "-cpu")
    done = os.path.join(out, "built")  # written after a build loaded: a build killed half-way is redone
    if os.path.exists(done):
        torch.ops.load_library(os.path.join(out, "etbkernels_C.so"))
        return
    _check_tools()
    os.makedirs(out, exist_ok=True)
    print(f"etbkernels: compiling the C++ extension for torch {torch.__version__} ({'CUDA' if cuda else 'CPU'}; "
          f"first import only, ~1-2 min on 2 cores) into {out}", file=sys.stderr, flush=True)
    old_cxx, old_cc = os.environ.get("CXX"), os.environ.get("CC")
    try:
        _choose_compiler()
        cpp_extension.load(
            name="etbkernels_C", sources=sources.sources(csrc, cuda), build_directory=out,
            extra_cflags=sources.cxx_flags() + [f"-D{k}={v}" if v else f"-D{k}" for k, v in sources.DEFINES]
            + (["-DETBK_WITH_CUDA"] if cuda else []),
            extra_cuda_cflags=sources.NVCC_FLAGS + ["-DETBK_WITH_CUDA"], extra_ldflags=sources.LD_FLAGS,
            extra_include_paths=[csrc], with_cuda=cuda, is_python_module=False, verbose=False)
    except Exception as e:  # the compiler's whole output would bury the reason: keep it in a log
        log = os.path.join(out, "build_error.log")
        with open(log, "w") as f:
            f.write(str(e))
        raise ImportError(f"etbkernels: building the C++ extension failed; the compiler's output is in {log}") from None
    finally:
        _restore("CXX", old_cxx)
        _restore("CC", old_cc)
    with open(done, "w") as f:
        f.write(torch.__version__ + "\n")


def _check_tools() -> None:
    """ninja, a C++ compiler and Python's headers, each refused in one line naming what to install."""
    if shutil.which("ninja") is None:
        # pip's ninja puts its binary in the environment's scripts folder, which is not on PATH unless
        # the environment is activated: torch's builder calls plain `ninja`
        scripts = sysconfig.get_paths()["scripts"]
        if not os.path.exists(os.path.join(scripts, "ninja")):
            raise ImportError("etbkernels: building the extension at first import needs ninja: pip install ninja")
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        raise ImportError(f"etbkernels: no C++ compiler ({cxx}) to build the extension: install g++ "
                          "(e.g. apt-get install g++) or set CXX")
    if not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        raise ImportError("etbkernels: building the extension needs the Python headers (Python.h): install "
                          f"python{sys.version_info[0]}.{sys.version_info[1]}-dev or your Python's headers")


def _choose_compiler() -> None:
    """The compiler setup.py would use (compiler_choice.py says why a GCC of torch's version)."""
    if os.environ.get("ETBK_KEEP_CXX", "0") == "1":
        return
    want = compiler_choice.torch_gcc_major(torch.__config__.show())
    cxx, cc, message = compiler_choice.choose_compiler(os.environ.get("CXX", "c++"), want)
    if message:
        print(message, file=sys.stderr)
    if cxx:
        os.environ["CXX"] = cxx
        if cc:
            os.environ["CC"] = cc


def _restore(key: str, value) -> None:
    if value is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = value
