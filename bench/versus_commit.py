"""bounds() of this checkout against another commit's, on the small and medium CNN (batch 256).

A change to the network code must not make the existing methods slower. The other commit's files
are extracted (``git archive``) into a temporary folder; two worker processes, one importing each
copy of the package, load the same models and inputs, and the parent asks them in turn for one timed call, interleaved
(one call of each version per round, the order alternating), so a burst of load on this shared
machine hits both alike. A process can also run a method at a steadily different speed from the
next one (seen here: IBP on the medium CNN at 0.12 s in one process, 0.19 s in another, the same
code), so the rounds are spread over several pairs of fresh workers (``--pairs``). Reports per model
and method the median seconds of each over all rounds and the ratio this/other. Writes
bench/results/versus_commit.{json,md}. :func:`compare` runs any other set of calls the same way
(``bench/etb_mask_speedup.py``).

    python -m bench run versus_commit -- --commit efd85f0~1
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .harness import parse_bench_args, write_results
from .harness.results import bench_parser

REPO = Path(__file__).resolve().parents[1]
METHODS = {"ibp": {"method": "ibp"}, "crown_ibp": {"method": "crown-ibp"},
           "etb_mask_ibp": {"mask": "ibp"}, "etb_mask_etb": {"mask": "etb"}}

# One worker: imports etbkernels from ROOT (argv[1]), runs the SETUP code (argv[3], a file), which defines
# CALLS = {key: function of no arguments}, then answers key lines with the seconds of one call.
WORKER = r"""
import sys, time
root = sys.argv[1]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()
                    and "editable" not in getattr(f, "__name__", "").lower()]
sys.path.insert(0, root)
import torch
import etbkernels
assert etbkernels.__file__.startswith(root), etbkernels.__file__
torch.set_num_threads(int(sys.argv[2]))
scope = {}
exec(open(sys.argv[3]).read(), scope)
CALLS = scope["CALLS"]
print("ready", flush=True)
for line in sys.stdin:
    fn = CALLS[line.strip()]
    t0 = time.perf_counter()
    fn()
    print(time.perf_counter() - t0, flush=True)
"""

# The calls of this benchmark: bounds() of each model and method, without gradients.
SETUP = r"""
import torch, etbkernels
from etbkernels.network import models
METHODS, BATCH = %r, %d
CALLS = {}
for name, make in {"small": models.small_cnn, "medium": models.medium_cnn}.items():
    torch.manual_seed(0)
    model, x = make().eval(), torch.rand(BATCH, 1, 28, 28)
    for key, kw in METHODS.items():
        def call(model=model, x=x, kw=kw):
            with torch.no_grad():
                etbkernels.bounds(model, x, 0.1, **kw)
        CALLS[name + " " + key] = call
"""


def _worker(root: str, threads: int, setup_file: str) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    p = subprocess.Popen([sys.executable, "-c", WORKER, root, str(threads), setup_file],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tempfile.gettempdir())
    if p.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the worker for {root} did not start")
    return p


def _ask(p: subprocess.Popen, key: str) -> float:
    p.stdin.write(key + "\n")
    p.stdin.flush()
    return float(p.stdout.readline())


def short_commit(rev: str) -> str:
    return subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()


def compare(commit: str, setup: str, keys, rounds: int, pairs: int, threads: int) -> dict:
    """Seconds per call, ``{(key, "this" | "other"): [one per round and pair]}``: ``setup`` (Python
    code defining ``CALLS``) run in a worker on this checkout and one on ``commit``, asked for each key
    in turn (one warm-up each), the order of the two alternating by round, in ``pairs`` fresh pairs."""
    times = {(k, v): [] for k in keys for v in ("other", "this")}
    with tempfile.TemporaryDirectory() as tmp:
        tree, setup_file = os.path.join(tmp, "other"), os.path.join(tmp, "setup.py")
        os.makedirs(tree)
        archive = subprocess.run(["git", "archive", commit], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
        with open(setup_file, "w") as f:
            f.write(setup)
        for _ in range(pairs):
            workers = {"other": _worker(tree, threads, setup_file), "this": _worker(str(REPO), threads, setup_file)}
            for k in keys:
                for v in workers:  # warm-up
                    _ask(workers[v], k)
            for r in range(rounds):
                order = list(workers) if r % 2 == 0 else list(reversed(list(workers)))
                for k in keys:
                    for v in order:
                        times[(k, v)].append(_ask(workers[v], k))
            for p in workers.values():
                p.stdin.close()
                p.wait()
    return times


def _graph_overhead_ms(names, batch: int) -> dict:
    """Milliseconds per call of :func:`build_graph` + :func:`lower_chain` on a cached trace, per model."""
    import torch

    from etbkernels.network import models
    from etbkernels.network.build import build_graph
    from etbkernels.network.parse import lower_chain

    from .harness import median_seconds

    out = {}
    for name in names:
        model = {"small": models.small_cnn, "medium": models.medium_cnn}[name]().eval()
        x = torch.rand(batch, 1, 28, 28)
        out[name] = 1e3 * median_seconds(lambda: lower_chain(build_graph(model, x)), repeats=200, warmup=2)
    return out


def add_compare_args(parser, commit: str, rounds: int, pairs: int, threads: int) -> None:
    """The options of a benchmark that runs :func:`compare`, with its defaults."""
    parser.add_argument("--commit", default=commit, help="the commit to compare this checkout with")
    parser.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds per call, per pair")
    parser.add_argument("--pairs", type=int, default=pairs, help="pairs of fresh worker processes")
    parser.add_argument("--threads", type=int, default=threads)


def main(argv=None) -> int:
    parser = bench_parser(__doc__, "versus_commit")
    add_compare_args(parser, commit="HEAD~1", rounds=7, pairs=3, threads=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--models", default="small,medium")
    args = parse_bench_args(parser, argv)
    rounds, batch, pairs = (2, 8, 1) if args.quick else (args.rounds, args.batch, args.pairs)
    names = args.models.split(",")
    commit = short_commit(args.commit)
    keys = [f"{m} {k}" for m in names for k in METHODS]
    times = compare(commit, SETUP % (METHODS, batch), keys, rounds, pairs, args.threads)
    rows = []
    for m in names:
        for k in METHODS:
            key = f"{m} {k}"
            this, other = statistics.median(times[(key, "this")]), statistics.median(times[(key, "other")])
            rows.append({"model": m, "method": k, "this_s": this, "other_s": other, "ratio": this / other,
                         "rounds": rounds * pairs})
    lines = [f"# bounds(): this checkout vs {commit} (batch {batch}, {args.threads} threads, {rounds} interleaved "
             f"rounds in each of {pairs} pairs of worker processes, medians)", "", "| model | method | this s | other s | this/other |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['method']} | {r['this_s']:.4f} | {r['other_s']:.4f} | {r['ratio']:.3f} |"
              for r in rows]
    graph_ms = _graph_overhead_ms(names, batch)
    lines += ["", "Per call, this checkout's trace lookup and operator rebuild (the work the traced graph adds in "
              "front of every method; in-process, median of 200 calls): "
              + ", ".join(f"{m} {v:.3f} ms" for m, v in graph_ms.items())]
    write_results(args, "versus_commit", {"commit": commit, "batch": batch, "rows": rows,
                                          "graph_overhead_ms": graph_ms}, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
