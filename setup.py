"""Build etbkernels: a CppExtension everywhere, a CUDAExtension where CUDA is available.

The switch: FORCE_CUDA=1 forces the CUDA build (for compile checks on machines without a GPU),
FORCE_CPU=1 forces the CPU build; otherwise CUDA is built when torch has CUDA and nvcc is found.
A C++ compiler that is a newer GCC than torch's is swapped for a GCC of torch's version where
one is installed (tools/compiler_choice.py says why; ETBK_KEEP_CXX=1 keeps it).
"""
import glob
import importlib.util
import os
import sys

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _use_torch_compatible_compiler():
    spec = importlib.util.spec_from_file_location("compiler_choice", os.path.join(HERE, "tools", "compiler_choice.py"))
    cc_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cc_mod)
    if os.environ.get("ETBK_KEEP_CXX", "0") == "1":
        return
    want = cc_mod.torch_gcc_major(torch.__config__.show())
    cxx, cc, message = cc_mod.choose_compiler(os.environ.get("CXX", "c++"), want)
    if message:
        print(message, file=sys.stderr)
    if cxx:
        os.environ["CXX"] = cxx
        if cc:
            os.environ["CC"] = cc  # also nvcc's host compiler (-ccbin) and the linker driver


_use_torch_compatible_compiler()


def _want_cuda() -> bool:
    if os.environ.get("FORCE_CPU", "0") == "1":
        return False
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None and torch.cuda.is_available()


def _extension():
    rel = lambda paths: sorted(os.path.relpath(p, HERE) for p in paths)  # noqa: E731
    sources = rel(glob.glob(os.path.join(HERE, "csrc", "*.cpp")) + glob.glob(os.path.join(HERE, "csrc", "cpu", "*.cpp")))
    # No -std flag: torch's BuildExtension adds the standard its headers need (C++17 up to torch
    # 2.13, C++20 from 2.14, whose ATen headers refuse C++17).
    cxx = ["-O3", "-fopenmp"]
    if os.environ.get("ETBK_DEBUG", "0") == "1":
        cxx = ["-O0", "-g", "-fopenmp"]
    define_macros = [("Py_LIMITED_API", "0x03090000")]
    include_dirs = [os.path.join(HERE, "csrc")]
    if _want_cuda():
        cu_sources = rel(glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu")) + glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cpp")))
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
        return CUDAExtension(
            "etbkernels._C",
            sources + cu_sources,
            include_dirs=include_dirs,
            define_macros=define_macros + [("ETBK_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            py_limited_api=True,
        )
    return CppExtension(
        "etbkernels._C",
        sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )


setup(
    name="etbkernels",
    version="0.1.0",
    description="Expected Tight Bounds (ETB) and IBP interval bounds for ReLU networks as fused PyTorch ops",
    packages=find_packages(include=["etbkernels", "etbkernels.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "hypothesis", "expecttest"],
        "demo": ["tqdm", "matplotlib"],
    },
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
    python_requires=">=3.9",
)
