"""Every bench/results file that README.md and docs/*.md cite exists, and the command that writes
it is listed in docs/benchmarks.md's table ("Where the figures land") and names a benchmark that
writes a file of that name (bench/registry.py) or a script that exists.

Citations are links (parsed with tools/doc_links.py) and paths written in prose or code spans
(``bench/results/lazy_tail.md``, ``bench/results/tightness.{json,md,png}``); a path without a
suffix names a result stem (``bench/results/bench_network_frozen``)."""
import fnmatch
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from bench.registry import BENCHMARKS

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
_spec = importlib.util.spec_from_file_location("doc_links", REPO / "tools" / "doc_links.py")
doc_links = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(doc_links)

_MENTION = re.compile(r"bench/results/([A-Za-z0-9_.{},-]+)")
_BRACES = re.compile(r"\{([^{}]*)\}")
TABLE_HEADING = "## Where the figures land"


def _expand(name: str) -> list:
    """``a.{json,md}`` -> [a.json, a.md]."""
    m = _BRACES.search(name)
    if not m:
        return [name]
    return [x for alt in m.group(1).split(",") for x in _expand(name[:m.start()] + alt + name[m.end():])]


def cited(root: Path = REPO) -> dict:
    """{name under bench/results: "file:line"} for every citation in README.md and docs/**/*.md of
    ``root``: link targets resolved against their file (tools/doc_links.py), then paths in the
    remaining text (prose, code spans and blocks) as written."""
    results = (root / "bench" / "results").resolve()
    out = {}
    for f in doc_links.doc_files(root):
        rel = f.relative_to(root).as_posix()
        lines = f.read_text(encoding="utf-8").split("\n")
        for link in doc_links.parse_links("\n".join(lines), rel):
            path, _ = doc_links.split_target(link.target)
            dest = (f.parent / path).resolve()
            if path and results in dest.parents:
                out.setdefault(dest.relative_to(results).as_posix(), f"{rel}:{link.line}")
            # the target is read: blank it for the prose pass (a link may span lines; its target does not)
            lines[link.line - 1] = lines[link.line - 1].replace(link.target, " " * len(link.target), 1)
        for i, line in enumerate(lines, 1):
            for m in _MENTION.finditer(line):
                for name in _expand(m.group(1).rstrip(".,")):
                    if name:
                        out.setdefault(name, f"{rel}:{i}")
    return out


def exists(name: str) -> bool:
    """A result file, or a stem with at least one file."""
    return (RESULTS / name).is_file() or (("." not in name) and any(RESULTS.glob(f"{name}.*")))


def listed_commands(doc: Path = REPO / "docs" / "benchmarks.md") -> dict:
    """{result file name: command} from the table under TABLE_HEADING of docs/benchmarks.md."""
    text = doc.read_text(encoding="utf-8")
    table = text.split(TABLE_HEADING, 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in table.splitlines():
        if not line.startswith("| [") and not line.startswith("| `"):
            continue
        files_cell, command_cell = line.strip().strip("|").rsplit("|", 1)
        command = re.search(r"`([^`]+)`", command_cell).group(1)
        for link in doc_links.parse_links(files_cell):
            dest = (doc.parent / doc_links.split_target(link.target)[0]).resolve()
            out[dest.relative_to(RESULTS).as_posix()] = command
    return out


def writer_ok(name: str, command: str) -> str:
    """"" when ``command`` would write ``name``, else why not."""
    words = shlex.split(command)
    if words[:2] == ["bash", "bench/gpu_check.sh"]:
        return "" if (REPO / "bench" / "gpu_check.sh").is_file() else "bench/gpu_check.sh is missing"
    if words[:4] != ["python", "-m", "bench", "run"] or len(words) < 5:
        return f"not a `python -m bench run NAME` or `bash bench/gpu_check.sh` command: {command}"
    entry = {b.name: b for b in BENCHMARKS}.get(words[4])
    if entry is None:
        return f"no benchmark {words[4]!r} in bench/registry.py"
    stem = name.split(".", 1)[0]
    if not any(fnmatch.fnmatch(stem, pattern) for pattern in entry.writes):
        return f"benchmark {entry.name!r} writes {entry.writes}, not {stem}"
    return ""


def test_cited_results_exist_and_their_command_is_listed():
    citations, commands = cited(), listed_commands()
    assert citations, "no bench/results citations found: the parser is broken"
    missing = [f"{where}: bench/results/{name}" for name, where in citations.items() if not exists(name)]
    assert not missing, "cited result files that do not exist:\n" + "\n".join(missing)
    unlisted = [f"{where}: bench/results/{name}" for name, where in citations.items()
                if name not in commands and not any(c.split(".", 1)[0] == name for c in commands)]
    assert not unlisted, "cited result files without a command in docs/benchmarks.md:\n" + "\n".join(unlisted)


@pytest.mark.parametrize("name", sorted(listed_commands()))
def test_listed_file_exists_and_its_command_writes_it(name):
    assert (RESULTS / name).is_file(), f"docs/benchmarks.md lists bench/results/{name}, which does not exist"
    assert writer_ok(name, listed_commands()[name]) == ""


def test_citations_are_links_resolved_against_their_file_and_paths_in_text(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("[r](bench/results/r.md) [elsewhere](other/bench/results/o.md)\n")
    (tmp_path / "docs" / "x.md").write_text(
        "[a](../bench/results/a%20b.md#top) and `bench/results/b.{json,md}`, see bench/results/c_stem.\n"
        "```\npython -m bench run x  # -> bench/results/in_fence.md\n```\n")
    assert set(cited(tmp_path)) == {"r.md", "a b.md", "b.json", "b.md", "c_stem", "in_fence.md"}


def test_a_wrong_command_is_reported():
    assert writer_ok("lazy_tail.md", "python -m bench run lazy_tail") == ""
    assert "writes" in writer_ok("lazy_tail.md", "python -m bench run crown_full")
    assert "no benchmark" in writer_ok("lazy_tail.md", "python -m bench run nothing")
    assert "not a" in writer_ok("lazy_tail.md", "python bench/lazy_tail.py")
    assert writer_ok("gpu_h100.md", "python -m bench run cuda") == ""
