"""What a result was measured on: CPU, cores, threads, torch, GPU, load average, git commit, time.

Numbers from a shared 2-core machine mean little without the load they ran under, so every
result file carries this next to its figures (bench/harness/results.py).
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]
LOAD_AT_START = os.getloadavg()  # this module is imported before a benchmark starts


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(repo: Path = REPO) -> Optional[str]:
    """HEAD's short hash, with "+local changes" when the working tree differs from it; None
    outside a git checkout (an installed copy)."""
    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "--short", "HEAD")
        if head.returncode != 0:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + (" +local changes" if dirty else "")


def machine_info() -> dict:
    """The machine and load a result was measured under, as a JSON-ready dict."""
    import torch

    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "load_avg_start": [round(v, 2) for v in LOAD_AT_START],
            "load_avg_end": [round(v, 2) for v in os.getloadavg()],
            "git_commit": git_commit(), "time_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def machine_line(info: dict) -> str:
    """One sentence of :func:`machine_info` for a markdown footer."""
    gpu = f", {info['gpu']} (CUDA {info['cuda']})" if "gpu" in info else ""
    load = lambda v: "/".join(f"{x:.1f}" for x in v)  # noqa: E731
    commit = f", commit {info['git_commit']}" if info.get("git_commit") else ""
    return (f"{info['cpu']}, {info['cores']} cores, {info['threads']} torch threads{gpu}; torch {info['torch']}, "
            f"Python {info['python']}; load average {load(info['load_avg_start'])} at start, "
            f"{load(info['load_avg_end'])} at end{commit}; {info['time_utc']} UTC")
