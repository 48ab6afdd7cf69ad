"""Wall-clock timing for the benchmarks: interleaved rounds, medians, warm-up, CUDA events on a GPU.

These machines are shared and noisy, so every ratio a benchmark reports is taken against a
baseline timed in the same run, and the calls being compared run interleaved (one call of each
per round) so that a burst of load hits all of them alike.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, Optional


def _call_seconds(fn: Callable[[], object], device: str) -> float:
    """Seconds of one call: CUDA events around it on a GPU (kernels run asynchronously), the host
    clock elsewhere."""
    if device.startswith("cuda"):
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved_medians(fns: Dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                        device: str = "cpu", single_if_slower_than: Optional[float] = None) -> Dict[str, dict]:
    """Times every fn once per round for ``repeats`` rounds, after ``warmup`` calls of each.

    Returns ``{name: {"median_s", "min_s", "max_s", "repeats"}}``. ``device="cuda"`` times with CUDA
    events. A call whose (first) warm-up took longer than ``single_if_slower_than`` seconds is not
    repeated: that one time is its result (``repeats`` 1), so one slow method cannot stretch a run
    to hours."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    times: Dict[str, list] = {k: [] for k in fns}
    active = dict(fns)
    for name, fn in fns.items():
        for i in range(warmup):
            t = _call_seconds(fn, device)
            if i == 0 and single_if_slower_than is not None and t > single_if_slower_than:
                times[name].append(t)
                active.pop(name)
                break
    for _ in range(repeats):
        for name, fn in active.items():
            times[name].append(_call_seconds(fn, device))
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "repeats": len(v)}
            for k, v in times.items()}


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1, device: str = "cpu") -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    return interleaved_medians({"fn": fn}, repeats, warmup, device)["fn"]["median_s"]


def cuda_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median milliseconds of ``fn`` on the current GPU (CUDA events), the GPU benchmarks' unit."""
    return 1e3 * median_seconds(fn, repeats, warmup, device="cuda")


def median_split(call: Callable[[], Dict[str, float]], repeats: int, warmup: int = 1) -> Dict[str, float]:
    """Per-key medians of a call that returns a breakdown of its own time (``{part: seconds}``,
    e.g. a profile by stage): one breakdown per repeat, after ``warmup`` calls."""
    for _ in range(warmup):
        call()
    rows = [call() for _ in range(repeats)]
    keys = sorted({k for r in rows for k in r})
    return {k: statistics.median(r.get(k, 0.0) for r in rows) for k in keys}
