"""``python -m bench``: the registry's entries are runnable modules, each described in
docs/benchmarks.md; ``list`` names them; ``run`` skips what cannot run here with a reason,
reports a failure without stopping, and writes where --out says."""
import importlib
import json
from pathlib import Path

import pytest
import torch

from bench import __main__ as cli
from bench.registry import BENCHMARKS, Benchmark, by_name

DOC = (Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md").read_text()


@pytest.mark.parametrize("b", BENCHMARKS, ids=lambda b: b.name)
def test_entry_is_a_module_with_main_described_in_the_docs(b):
    assert callable(importlib.import_module(b.module).main)
    assert b.summary and b.writes
    assert any(line.startswith("### ") and b.name in line.split() for line in DOC.splitlines()), \
        f"docs/benchmarks.md has no section on {b.name}"


def test_names_and_result_files_are_unique():
    names = [b.name for b in BENCHMARKS]
    stems = [s for b in BENCHMARKS for s in b.writes]
    assert len(set(names)) == len(names) and len(set(stems)) == len(stems)
    with pytest.raises(KeyError, match="known: block"):
        by_name("nope")


def test_list_names_every_benchmark(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == [b.name for b in BENCHMARKS]


def test_what_cannot_run_here_is_skipped_with_its_reason():
    old = by_name("auto_lirpa_old_torch")
    assert cli.run_one(old, quick=True, out=None, extra=[]).startswith("skipped: needs another torch")
    status = cli.run_one(by_name("cuda"), quick=True, out=None, extra=[])
    if not torch.cuda.is_available():
        assert status == "skipped: GPU-only (no CUDA device here)"


def test_a_failing_benchmark_is_reported_and_the_state_restored(capsys):
    threads = torch.get_num_threads()
    broken = Benchmark("broken", "bench.registry", "a module without main", ("broken",))
    assert cli.run_one(broken, quick=True, out=None, extra=[]).startswith("FAILED: AttributeError")
    assert torch.get_num_threads() == threads


def test_run_by_name_writes_to_out(tmp_path, capsys):
    assert cli.main(["run", "chunk_plan_network", "--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "chunk_plan_network.json").read_text())
    assert data["run"]["command"] == f"python -m bench.chunk_size_network --plan-only --quick --out {tmp_path}"
    assert "chunk_plan_network" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["run"], ["run", "block", "--all"], ["run", "--all", "--", "--batch", "2"],
                                  ["run", "nope"]])
def test_bad_run_arguments_are_refused(argv):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
