"""The options the CNN benchmarks share: --models, --batch and --repeats, with the full-run and
the --quick defaults in one place."""
from __future__ import annotations

import argparse
from typing import List, Sequence, Tuple

from .results import bench_parser


def network_parser(doc: str, module: str, repeats: int, choices: Sequence[str] = ("small", "medium"),
                   quick_batch: int = 3) -> argparse.ArgumentParser:
    """:func:`bench_parser` plus --models (default small and medium CNN; --quick: small), --batch
    (256; --quick: ``quick_batch``) and --repeats (``repeats``; --quick: 1)."""
    parser = bench_parser(doc, module)
    parser.add_argument("--models", nargs="+", default=None, choices=list(choices),
                        help="default small medium (--quick: small)")
    parser.add_argument("--batch", type=int, default=None, help=f"default 256 (--quick: {quick_batch})")
    parser.add_argument("--repeats", type=int, default=None, help=f"default {repeats} (--quick: 1)")
    parser.set_defaults(network_defaults=(repeats, quick_batch))
    return parser


def network_settings(args: argparse.Namespace) -> Tuple[List[str], int, int]:
    """(models, batch, repeats) after the --quick defaults."""
    repeats, quick_batch = args.network_defaults
    models = args.models or (["small"] if args.quick else ["small", "medium"])
    return models, args.batch or (quick_batch if args.quick else 256), args.repeats or (1 if args.quick else repeats)
