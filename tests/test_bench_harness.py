"""The benchmark harness (bench/harness/): interleaved timing, the result writer and its
metadata, --quick's output folder, the block flop formulas against what torch counts, and the
pytest-benchmark converter."""
import json
import time

import pytest
import torch

from bench.harness import block_flops, count_flops, interleaved_medians, median_split
from bench.harness.machine import git_commit, machine_info
from bench.harness.pytest_benchmark import rows_from_json, table_lines
from bench.harness.results import RESULTS_DIR, bench_parser, parse_bench_args, write_results
from etbkernels import reference as R
from etbkernels.testing import random_block


def test_interleaved_rounds_alternate_and_warm_up():
    calls = []
    t = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=2)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert t["a"]["repeats"] == 3 and 0 <= t["a"]["min_s"] <= t["a"]["median_s"] <= t["a"]["max_s"]


def test_a_slow_call_is_timed_once():
    calls = []
    t = interleaved_medians({"slow": lambda: (calls.append("slow"), time.sleep(0.02)),
                             "fast": lambda: calls.append("fast")}, repeats=3, single_if_slower_than=0.01)
    assert calls.count("slow") == 1 and calls.count("fast") == 4
    assert t["slow"]["repeats"] == 1 and t["slow"]["median_s"] >= 0.02


def test_median_split_takes_medians_per_key():
    # the warm-up's 9 is dropped; a stage that did not run in a repeat counts 0 there
    parts = iter([{"x": 9.0}, {"x": 1.0, "y": 2.0}, {"x": 3.0}, {"x": 2.0}])
    assert median_split(lambda: next(parts), repeats=3, warmup=1) == {"x": 2.0, "y": 0.0}


def test_writer_records_command_and_machine(tmp_path):
    args = parse_bench_args(bench_parser("doc", "bench.example"), ["--out", str(tmp_path), "--quick"])
    assert args.command == f"python -m bench.example --out {tmp_path} --quick"
    path = write_results(args, "example", {"rows": [1, 2]}, ["# Example", "", "| a |"],
                         figure=lambda p: p.write_bytes(b"png"))
    data = json.loads(path.read_text())
    assert data["rows"] == [1, 2] and data["run"]["command"] == args.command and data["run"]["quick"] is True
    for key in ("cpu", "cores", "threads", "torch", "load_avg_start", "load_avg_end", "git_commit", "time_utc"):
        assert key in data["run"]
    md = (tmp_path / "example.md").read_text()
    assert md.startswith("# Example\n") and f"Run: `{args.command}` on " in md and "load average" in md
    assert (tmp_path / "example.png").read_bytes() == b"png"
    with pytest.raises(ValueError, match="'run'"):
        write_results(args, "clash", {"run": 1}, [])


def test_quick_results_go_to_a_fresh_folder_not_the_committed_ones():
    p = bench_parser("doc", "bench.example")
    quick, full = parse_bench_args(p, ["--quick"]), parse_bench_args(p, [])
    assert full.out == RESULTS_DIR
    assert quick.out != RESULTS_DIR and quick.out.is_dir() and not any(quick.out.iterdir())
    quick.out.rmdir()


def test_machine_info_names_this_checkout():
    info = machine_info()
    assert info["torch"] == torch.__version__ and info["cores"] >= 1
    commit = git_commit()
    assert commit is None or commit.split()[0].isalnum()


@pytest.mark.parametrize("backward", [False, True])
def test_block_flop_formulas_match_what_torch_counts(backward):
    """The naive reference and IBP's reference are plain matmuls, so torch's flop count checks the
    formulas (ETB's fused kernel does the naive reference's products, plus one P recomputation
    in the backward, which the formula adds)."""
    N, n, h, m = 3, 7, 5, 4
    leaves = [t.detach().clone().requires_grad_(backward) for t in random_block(N, n, h, m, seed=1).args()]

    def run(fn):
        def call():
            lower, upper = fn(*leaves)
            if backward:
                (lower + upper).sum().backward()
        return count_flops(call)
    # the reference forms W1 c twice (centre and mask), and sums |P| r elementwise (not a matmul)
    assert run(R.etb_block_ref) == block_flops("naive", N, n, h, m, backward) - 2 * N * m * n + 2 * N * h * n
    assert run(R.ibp_block_ref) == block_flops("ibp", N, n, h, m, backward)
    a, b = torch.randn(N * m, h, requires_grad=backward), torch.randn(h, n, requires_grad=backward)
    assert count_flops(lambda: torch.mm(a, b).sum().backward() if backward else torch.mm(a, b)) == \
        block_flops("matmul", N, n, h, m, backward)
    p = 2 * N * m * h * n
    etb_minus_naive = block_flops("etb", N, n, h, m, backward) - block_flops("naive", N, n, h, m, backward)
    assert etb_minus_naive == (p if backward else 0)


def _report(*benchmarks):
    return {"version": "5.3.1", "benchmarks": [
        {"group": g, "name": f"test[{c}]", "extra_info": {"case": c, "flops": f, "baseline": base},
         "stats": {"median": med, "iqr": 0.001, "min": med / 2, "rounds": 5}} for g, c, med, f, base in benchmarks]}


def test_pytest_benchmark_report_becomes_one_table_per_group():
    rows = rows_from_json(_report(("g1", "etb_block", 0.4, 4e9, False), ("g1", "same_flops_matmul", 0.2, 2e9, True),
                                  ("g2", "ibp", 0.01, None, True), ("g2", "crown", 0.05, None, False)))
    by_case = {r["case"]: r for r in rows}
    assert by_case["etb_block"]["over_baseline"] == pytest.approx(2.0)
    assert by_case["etb_block"]["gflops"] == pytest.approx(10.0)
    assert by_case["crown"]["over_baseline"] == pytest.approx(5.0) and "gflops" not in by_case["crown"]
    lines = table_lines(rows)
    assert lines.index("### g1") < lines.index("### g2")
    assert "| etb_block | 400.000 | 1.000 | 200.000 | 5 | 2.00 | 10.0 |" in lines
    assert "| case | median ms | IQR ms | min ms | rounds | / ibp | GFLOP/s |" in lines


def test_a_group_without_baseline_has_no_ratio():
    (row,) = rows_from_json(_report(("g", "x", 0.1, None, False)))
    assert "over_baseline" not in row
    assert "| x | 100.000 | 1.000 | 50.000 | 5 | - | - |" in table_lines([row])
