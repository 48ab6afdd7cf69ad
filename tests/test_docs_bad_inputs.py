"""docs/bad_inputs.md cannot rot: every row names tests that exist, and every test of
test_bad_input_catalogue.py appears in some row."""
import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "bad_inputs.md"
REF = re.compile(r"(tests/[\w/]+\.py)::(\w+)")


def _rows():
    """(number, cells) for each data row of the table in docs/bad_inputs.md."""
    rows = []
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if cells and cells[0].isdigit():
            rows.append((int(cells[0]), cells))
    return rows


def _test_functions(path: Path):
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test")}


def test_table_shape():
    rows = _rows()
    assert len(rows) >= 35
    assert [n for n, _ in rows] == list(range(1, len(rows) + 1)), "rows must be numbered 1, 2, 3, ..."
    for n, cells in rows:
        assert len(cells) == 5 and all(cells), f"row {n}: needs #, API, input, promised behaviour, test"


def test_every_row_names_existing_tests():
    missing = []
    for n, cells in _rows():
        refs = REF.findall(cells[4])
        assert refs, f"row {n}: no tests/<file>.py::<test> in {cells[4]!r}"
        for file, name in refs:
            path = REPO / file
            if not path.is_file() or name not in _test_functions(path):
                missing.append(f"row {n}: {file}::{name}")
    assert not missing, "docs/bad_inputs.md names tests that do not exist: " + ", ".join(missing)


def test_every_catalogue_test_is_in_the_table():
    named = {name for _, cells in _rows() for file, name in REF.findall(cells[4])
             if file == "tests/test_bad_input_catalogue.py"}
    tests = _test_functions(REPO / "tests" / "test_bad_input_catalogue.py")
    assert tests - named == set(), f"tests missing from docs/bad_inputs.md: {sorted(tests - named)}"
