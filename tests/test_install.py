"""How the extension gets built (etbkernels/_build): the pure wheel of an isolated `pip install .`,
the first-import build's cache key, and the one-line messages when something is missing. The full
plain-install path (fresh venv, compile at first import) is CI's scripts/ci_plain_install.sh."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from etbkernels._build import load, sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Python that cannot import torch, as in pip's isolated build environment
NO_TORCH = "import sys; sys.modules['torch'] = None\n"


def _python(code, cwd=ROOT, **env):
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_import_without_torch_names_what_to_install(tmp_path):
    r = _python(NO_TORCH + "import etbkernels")
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: etbkernels needs PyTorch") and "pip install torch" in last, r.stderr


def test_setup_without_torch_makes_a_wheel_that_carries_the_sources(tmp_path):
    """What pip's isolated build does: no compiled module, csrc shipped as etbkernels/_csrc."""
    build = tmp_path / "src"
    shutil.copytree(ROOT, build, ignore=shutil.ignore_patterns(".venv*", ".git", "build", "*.so", "__pycache__",
                                                               "*.egg-info", ".pytest_cache", ".hypothesis", "runs"))
    runner = (NO_TORCH + "import sys, runpy; sys.argv = ['setup.py', '-q', 'bdist_wheel', '-d', sys.argv[1]];"
              " runpy.run_path('setup.py', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", runner, str(tmp_path / "dist")], cwd=build, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "torch is not importable here" in r.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name.endswith("py3-none-any.whl")  # pure: nothing compiled
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {"etbkernels/_csrc/" + os.path.relpath(p, os.path.join(ROOT, "csrc"))
            for p in sources.sources(os.path.join(ROOT, "csrc"), cuda=True)}
    assert want and want <= names, sorted(want - names)
    assert "etbkernels/_build/load.py" in names and not any(n.endswith(".so") for n in names)


def test_find_csrc_prefers_the_shipped_copy(tmp_path):
    pkg = tmp_path / "etbkernels"
    for d in (pkg / "_csrc", tmp_path / "csrc"):
        d.mkdir(parents=True)
        (d / "ops.cpp").write_text("//")
    assert sources.find_csrc(str(pkg)) == str(pkg / "_csrc")
    shutil.rmtree(pkg / "_csrc")
    assert sources.find_csrc(str(pkg)) == str(tmp_path / "csrc")
    shutil.rmtree(tmp_path / "csrc")
    assert sources.find_csrc(str(pkg)) is None


def test_cache_folder_follows_every_source_file_and_the_flags(tmp_path, monkeypatch):
    csrc = tmp_path / "csrc"
    shutil.copytree(os.path.join(ROOT, "csrc"), csrc)
    monkeypatch.setenv("ETBK_CACHE_DIR", str(tmp_path / "cache"))
    first = load.cache_dir(str(csrc))
    assert first.startswith(str(tmp_path / "cache")) and first == load.cache_dir(str(csrc))
    (csrc / "cpu" / "strategy.h").write_text((csrc / "cpu" / "strategy.h").read_text() + "\n// edited\n")
    second = load.cache_dir(str(csrc))  # a header changed: a stale build must not be loaded
    assert second != first
    monkeypatch.setenv("ETBK_DEBUG", "1")
    assert load.cache_dir(str(csrc)) != second


@pytest.mark.parametrize("missing, expect", [("ninja", "pip install ninja"), ("cxx", "install g++")])
def test_first_import_build_names_a_missing_tool(tmp_path, monkeypatch, missing, expect):
    monkeypatch.setattr(load.shutil, "which", lambda name: None if missing == "ninja" or name.endswith("no-such-c++")
                        else "/usr/bin/" + name)
    monkeypatch.setattr(load.sysconfig, "get_paths", lambda: {"scripts": str(tmp_path), "include": str(tmp_path)})
    monkeypatch.setenv("CXX", "no-such-c++")
    with pytest.raises(ImportError, match=expect):
        load._check_tools()
