"""Timing, memory and output helpers shared by the benchmarks: medians of interleaved repeats
(these machines are noisy, so every ratio is taken against a baseline measured in the same run),
peak extra resident memory measured in a fresh subprocess, and writing a result pair
(``.json`` data, ``.md`` table)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict


def network_bench_args(doc: str, name: str, repeats: int, argv=None) -> argparse.Namespace:
    """The arguments the network benchmarks share: --batch, --repeats, --models (small, medium)
    and --out (default bench/results/``name``)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=repeats)
    ap.add_argument("--models", nargs="+", default=["small", "medium"], choices=["small", "medium"])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", name))
    return ap.parse_args(argv)


def write_results(out: str, data, lines) -> None:
    """Writes ``out``.json (``data``) and ``out``.md (``lines``), and prints the table."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(data, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after one warm-up call."""
    return interleaved_medians({"fn": fn}, repeats)["fn"]["median_s"]


def interleaved_medians(fns: Dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> Dict[str, dict]:
    """Runs every fn once per round, ``repeats`` rounds, and returns median/min/max seconds per name."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "repeats": len(v)}
            for k, v in times.items()}


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_peak_extra_mib(setup: Callable[[], Callable[[], object]]) -> float:
    """Peak resident memory (MiB) that one call adds on top of its inputs, in this process.

    ``setup`` builds the inputs and returns the call. The peak (VmHWM) is reset after setup via
    /proc/self/clear_refs, so only the call's own allocations count."""
    fn = setup()
    try:  # hand freed heap pages back to the OS so they cannot hide the call's own allocations
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    before = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    fn()
    return (_rss_kib("VmHWM") - before) / 1024.0


def peak_in_subprocess(module: str, args: list) -> float:
    """Runs ``python -m module --peak-json ...args`` in a fresh process and returns the MiB it reports."""
    import torch

    # A fixed mmap threshold: every allocation >= 64 KiB gets fresh pages (glibc would otherwise
    # serve it from already-resident freed heap memory, and the peak would read too low).
    env = os.environ | {"ETBK_POISON": "0", "OMP_NUM_THREADS": str(torch.get_num_threads()),
                        "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-m", module, "--peak", *args], check=True, capture_output=True,
                         text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_mib"]
