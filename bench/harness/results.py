"""Command-line arguments every benchmark shares, and the one writer of result files.

Each benchmark writes ``<out>/<name>.json`` (its data, plus the command and the machine it ran
on), ``<out>/<name>.md`` (its table, with the same facts in a closing line) and, where a picture
says more, ``<out>/<name>.png``. ``<out>`` is bench/results by default; a ``--quick`` (smoke) run
writes to a fresh temporary folder unless ``--out`` is given, so it never replaces the committed
figures.
"""
from __future__ import annotations

import argparse
import json
import shlex
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

from .machine import machine_info, machine_line

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


def bench_parser(doc: str, module: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes: ``--quick`` and ``--out``.

    ``doc`` is the module docstring (shown by --help), ``module`` its dotted name (``bench.X``)."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny sizes and one repeat; results go to a temporary folder unless --out")
    p.add_argument("--out", type=Path, default=None,
                   help=f"folder for the result files (default {RESULTS_DIR.relative_to(RESULTS_DIR.parents[1])}/)")
    p.set_defaults(module=module)
    return p


def parse_bench_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parses ``argv`` and adds ``args.command`` (how to run this again) and the resolved ``args.out``."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command = " ".join(["python -m", parser.get_default("module"), *map(shlex.quote, argv)])
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="etbk-bench-quick-")) if args.quick else RESULTS_DIR
    return args


def write_results(args: argparse.Namespace, name: str, data: dict, lines: Sequence[str],
                  figure: Optional[Callable[[Path], None]] = None) -> Path:
    """Writes ``name``.json (``data`` and a ``"run"`` entry: command, quick, machine), ``name``.md
    (``lines`` and a closing line naming the command and machine) and, when ``figure`` is given,
    ``name``.png (``figure(path)`` draws it). Prints the table; returns the .json path."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = {"command": args.command, "quick": bool(getattr(args, "quick", False)), **machine_info()}
    if "run" in data:
        raise ValueError("'run' is the harness's key in a result file")
    (out / f"{name}.json").write_text(json.dumps({"run": run, **data}, indent=1) + "\n")
    text = "\n".join([*lines, "", f"Run: `{args.command}` on {machine_line(run)}."]) + "\n"
    (out / f"{name}.md").write_text(text)
    written = [f"{name}.json", f"{name}.md"]
    if figure is not None:
        figure(out / f"{name}.png")
        written.append(f"{name}.png")
    print(text)
    print(f"wrote {', '.join(str(out / w) for w in written)}", flush=True)
    return out / f"{name}.json"
