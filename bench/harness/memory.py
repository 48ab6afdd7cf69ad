"""Peak resident memory of one call, measured in a fresh child process (Linux /proc).

The parent runs ``python -m MODULE --peak ARGS...``; the module's ``--peak`` branch builds its
inputs, calls :func:`report_peak`, which prints one JSON line, and the parent reads it back
(:func:`peak_in_child`). A fresh process per measurement keeps one method's caches and freed heap
from hiding or inflating another's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Callable, Sequence


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_peak(setup: Callable[[], Callable[[], object]]) -> dict:
    """Peak resident memory of one call, in this process: ``{"peak_rss_mib", "rss_before_mib",
    "extra_mib", "seconds"}``; extra is what the call adds on top of its inputs.

    ``setup`` builds the inputs and returns the call. The peak (VmHWM) is reset after setup via
    /proc/self/clear_refs, so only the call's own allocations count."""
    fn = setup()
    try:  # hand freed heap pages back to the OS so they cannot hide the call's own allocations
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    return {"peak_rss_mib": peak / 1024, "rss_before_mib": before / 1024, "extra_mib": (peak - before) / 1024,
            "seconds": seconds}


def report_peak(setup: Callable[[], Callable[[], object]]) -> None:
    """The child side: measures (:func:`measure_peak`) and prints the result as the last stdout line."""
    print(json.dumps(measure_peak(setup)), flush=True)


def peak_in_child(module: str, args: Sequence[str]) -> dict:
    """Runs ``python -m module --peak *args`` in a fresh process and returns what it reported."""
    import torch

    # A fixed mmap threshold: every allocation >= 64 KiB gets fresh pages (glibc would otherwise
    # serve it from already-resident freed heap memory, and the peak would read too low).
    env = os.environ | {"ETBK_POISON": "0", "OMP_NUM_THREADS": str(torch.get_num_threads()),
                        "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-m", module, "--peak", *map(str, args)], check=True,
                         capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])
