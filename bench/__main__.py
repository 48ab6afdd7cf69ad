"""``python -m bench``: list the benchmarks, run one, several or all.

    python -m bench list
    python -m bench run NAME [NAME ...] [--quick] [--out DIR] [-- ARGS for the benchmark]
    python -m bench run --all --quick [--out DIR]      # CI's smoke run

A benchmark that cannot run here (GPU-only, another torch, a missing optional package) is
skipped with the reason printed. A --quick run writes to a temporary folder unless --out is
given, never over bench/results. The exit status is 1 when a benchmark failed.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
import traceback
from typing import List, Sequence

from .registry import BENCHMARKS, Benchmark, by_name


def list_benchmarks() -> List[str]:
    """One line per benchmark: name, summary, and why it would be skipped here."""
    width = max(len(b.name) for b in BENCHMARKS)
    lines = []
    for b in BENCHMARKS:
        why = b.unavailable()
        lines.append(f"{b.name:<{width}}  {b.summary}" + (f"  [skipped here: {why}]" if why else ""))
    return lines


def run_one(b: Benchmark, quick: bool, out, extra: Sequence[str]) -> str:
    """Runs one benchmark in this process; returns "ok", "skipped: why" or "FAILED: what"."""
    why = b.unavailable(extra)
    if why:
        return f"skipped: {why}"
    import torch

    argv = [*b.args, *(["--quick"] if quick else []), *(["--out", str(out)] if out else []), *extra]
    print(f"=== {b.name}: python -m {b.module} {' '.join(argv)}", flush=True)
    threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    try:
        rc = importlib.import_module(b.module).main(argv)
    except Exception as e:  # noqa: BLE001  (one failure must not stop the others)
        traceback.print_exc()
        return f"FAILED: {type(e).__name__}: {e}"
    finally:  # a benchmark may set these; the next one starts from the same state
        torch.set_num_threads(threads)
        torch.set_float32_matmul_precision(precision)
    return "ok" if rc in (0, None) else f"FAILED: exit status {rc}"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: List[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the benchmarks, one line each")
    run = sub.add_parser("run", help="run benchmarks")
    run.add_argument("names", nargs="*", help="benchmarks to run (python -m bench list)")
    run.add_argument("--all", action="store_true", help="every benchmark (those that cannot run here are skipped)")
    run.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, results to a temporary folder")
    run.add_argument("--out", default=None, help="folder for the result files (default bench/results; "
                                                 "with --quick a new temporary folder)")
    args = ap.parse_args(argv)
    if args.command == "list":
        print("\n".join(list_benchmarks()))
        return 0
    if bool(args.all) == bool(args.names):
        ap.error("run: name benchmarks or give --all")
    if args.all and extra:
        ap.error("run --all: arguments after -- go to one benchmark, name it")
    try:
        chosen = list(BENCHMARKS) if args.all else [by_name(n) for n in args.names]
    except KeyError as e:
        ap.error(str(e.args[0]))
    out = args.out or (tempfile.mkdtemp(prefix="etbk-bench-quick-") if args.quick else None)
    start, report = time.perf_counter(), []
    for b in chosen:
        t0 = time.perf_counter()
        status = run_one(b, args.quick, out, extra)
        report.append((b.name, status, time.perf_counter() - t0))
        if status.startswith("skipped"):
            print(f"=== {b.name}: {status}", flush=True)
    print(f"\nbench run{' --quick' if args.quick else ''}: {time.perf_counter() - start:.0f} s"
          + (f", results in {out}" if out else ", results in bench/results"))
    for name, status, seconds in report:
        print(f"  {name:<22s} {seconds:6.1f} s  {status}")
    return 1 if any(s.startswith("FAILED") for _, s, _ in report) else 0


if __name__ == "__main__":
    sys.exit(main())
