"""etbkernels/_build/compiler_choice.py: the build avoids compilers whose extensions crash on error messages."""
import importlib.util
import os
import shutil
import stat

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("compiler_choice", os.path.join(ROOT, "etbkernels", "_build", "compiler_choice.py"))
cc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cc)

REAL_GXX = shutil.which("g++")
needs_gxx = pytest.mark.skipif(REAL_GXX is None or shutil.which("nm") is None, reason="needs g++ and nm")


def script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def fake_gcc(tmp_path, name, version, banner="g++ (GCC) {v}"):
    """An executable that answers --version and -dumpversion like a GCC driver (and builds nothing)."""
    return script(tmp_path, name, f"if [ \"$1\" = -dumpversion ]; then echo {version}; else echo '{banner.format(v=version)}'; fi")


def test_torch_gcc_major_parses_config():
    assert cc.torch_gcc_major("PyTorch built with:\n  - GCC 13.3\n  - C++ Version: 201703") == 13
    assert cc.torch_gcc_major("PyTorch built with:\n  - clang 17.0") is None


def test_gcc_major_reads_drivers_and_rejects_clang_and_missing(tmp_path):
    assert cc.gcc_major(fake_gcc(tmp_path, "g++-15", "15.1.0")) == 15
    assert cc.gcc_major(fake_gcc(tmp_path, "clang++", "17.0.6", banner="clang version {v}")) is None
    assert cc.gcc_major(str(tmp_path / "no-such-compiler")) is None


@needs_gxx
def test_probe_tells_a_static_libstdcxx_compiler_from_a_normal_one(tmp_path):
    static = script(tmp_path, "g++-static", f'exec {REAL_GXX} -static-libstdc++ "$@"')
    assert cc.carries_private_libstdcxx(REAL_GXX) is False
    assert cc.carries_private_libstdcxx(static) is True
    assert cc.carries_private_libstdcxx(str(tmp_path / "missing")) is None


def test_newer_gcc_is_swapped_for_torchs_version(tmp_path):
    new = fake_gcc(tmp_path, "g++", "15.2.0")
    old = fake_gcc(tmp_path, "g++-13", "13.3.0")
    old_c = fake_gcc(tmp_path, "gcc-13", "13.3.0")
    cxx, c_driver, msg = cc.choose_compiler(new, 13, which={"g++-13": old}.get, private_of=lambda c: False)
    assert cxx == old and c_driver == old_c
    assert "GCC 15" in msg and "GCC 13" in msg and "ETBK_KEEP_CXX" in msg


def test_same_version_compiler_with_private_libstdcxx_is_swapped(tmp_path):
    bad = fake_gcc(tmp_path, "opt-g++", "13.3.0")
    good = fake_gcc(tmp_path, "g++", "13.3.0")
    cxx, _, msg = cc.choose_compiler(bad, 13, which={"/usr/bin/g++": good}.get, private_of=lambda c: c == bad)
    assert cxx == good and "own copy of libstdc++" in msg


@pytest.mark.parametrize("have", ["12.2.0", "13.1.0"])
def test_safe_older_or_equal_gcc_is_kept(tmp_path, have):
    cxx, c_driver, msg = cc.choose_compiler(fake_gcc(tmp_path, "g++", have), 13, which=lambda n: None,
                                            private_of=lambda c: False)
    assert (cxx, c_driver, msg) == (None, None, "")


def test_unsafe_gcc_without_a_safe_one_warns(tmp_path):
    new = fake_gcc(tmp_path, "g++", "15.2.0")
    cxx, _, msg = cc.choose_compiler(new, 13, which=lambda n: new, private_of=lambda c: False)
    assert cxx is None and msg.startswith("etbkernels setup: WARNING")
