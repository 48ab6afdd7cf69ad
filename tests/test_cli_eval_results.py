"""`eval` keeps a result of other settings unless --force; --no-pgd leaves the PGD figures null (not 0)."""
import json

import pytest

from etbkernels.cli import main
from tiny_data import fashion_folder

EVAL = ["--eps", "0.05", "--limit", "6", "--pgd-steps", "2", "--violation-limit", "2", "--violation-steps", "2",
        "--batch-size", "4", "--threads", "1", "--no-progress"]
NO_PGD = EVAL[:4] + EVAL[6:]
assert "--pgd-steps" not in NO_PGD


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 784-4-10 MLP trained one epoch on a tiny random Fashion-MNIST IDX folder (24 train, 8 test images)."""
    root = tmp_path_factory.mktemp("evalres")
    data = fashion_folder(root / "fashion", 24, 8, seed=2)
    out = root / "run"
    assert main(["train", "--dataset", "fashion-mnist", "--data-dir", str(data), "--model", "mlp", "--mlp-widths",
                 "4", "--batch-size", "8", "--threads", "1", "--eps", "0.05", "--no-progress", "--out", str(out)]) == 0
    return out


def _refused(capsys, path, *names):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"etbkernels eval: error: {path} exists and " in err and "pass --force" in err
    for name in names:
        assert name in err, (name, err)


@pytest.mark.parametrize("change,named", [
    (["--limit", "5"], "limit 6 -> 5"), (["--pgd-steps", "3"], "pgd_steps 2 -> 3"),
    (["--pgd-restarts", "2"], "pgd_restarts 1 -> 2"), (["--pgd-step-size", "0.01"], "pgd_step_size None -> 0.01"),
    (["--no-pgd"], "pgd_steps 2 -> None"), (["--float32"], "bounds_dtype 'float64' -> 'float32'"),
    (["--full-crown"], "full_crown False -> True"), (["--etb-mask", "etb"], "etb_mask 'ibp' -> 'etb'"),
    (["--violation-limit", "3"], "violation_limit 2 -> 3"), (["--violation-steps", "3"], "violation_steps 2 -> 3"),
    (["--violation-restarts", "2"], "violation_restarts 1 -> 2"), (["--seed", "1"], "seed 0 -> 1"),
    (["--batch-size", "3"], "batch_size 4 -> 3"),
])
def test_eval_refuses_to_overwrite_a_result_of_other_settings(run, tmp_path, capsys, change, named):
    out = tmp_path / "res"
    assert main(["eval", str(run), *EVAL, "--out", str(out)]) == 0
    path = out / "eval_eps0.05.json"
    before = path.read_bytes()
    argv = NO_PGD if change == ["--no-pgd"] else EVAL  # --no-pgd cannot be given with --pgd-steps
    assert main(["eval", str(run), *argv, *change, "--out", str(out)]) == 1
    _refused(capsys, path, named)
    assert path.read_bytes() == before
    assert main(["eval", str(run), *argv, *change, "--out", str(out), "--force"]) == 0
    assert path.read_bytes() != before


def test_eval_rewrites_a_result_of_the_same_settings_and_checks_every_eps_first(run, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["eval", str(run), *EVAL, "--out", str(out)]) == 0
    path = out / "eval_eps0.05.json"
    first = json.loads(path.read_text())
    assert first["settings"]["limit"] == 6 and first["settings"]["checkpoint"] == str(run / "checkpoint.pt")
    path.write_text(json.dumps(dict(first, n=-1)))  # a marker: identical settings rewrite the file
    assert main(["eval", str(run / "checkpoint.pt"), *EVAL, "--out", str(out)]) == 0  # the same checkpoint
    again = json.loads(path.read_text())
    assert again.pop("checkpoint") == str(run / "checkpoint.pt")  # as given; settings hold the resolved file
    assert again == {k: v for k, v in first.items() if k != "checkpoint"}
    # a run over two eps refuses before evaluating either: eps 0 must not be written
    assert main(["eval", str(run), *EVAL, "--eps", "0", "0.05", "--limit", "4", "--out", str(out)]) == 1
    _refused(capsys, path, "limit 6 -> 4")
    assert not (out / "eval_eps0.json").exists()
    # another checkpoint's result in a shared --out folder is another setting too
    other = tmp_path / "other"
    other.mkdir()
    (other / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes())
    assert main(["eval", str(other), *EVAL, "--out", str(out)]) == 1
    _refused(capsys, path, "checkpoint ")


def test_eval_refuses_to_overwrite_a_foreign_or_older_file(run, tmp_path, capsys):
    out = tmp_path / "res"
    out.mkdir()
    path = out / "eval_eps0.05.json"
    path.write_text("not json")
    assert main(["eval", str(run), *EVAL, "--out", str(out)]) == 1
    _refused(capsys, path, "it is not an etbkernels evaluation result")
    assert path.read_text() == "not json"
    # a result written before the limit was recorded: it may hold a larger evaluation
    old = {"eps": 0.05, "n": 8, "settings": {"pgd_steps": 40, "pgd_restarts": 1, "pgd_step_size": None,
                                             "bounds_dtype": "float64", "etb_mask": "ibp", "seed": 0}}
    path.write_text(json.dumps(old))
    assert main(["eval", str(run), *EVAL, "--out", str(out)]) == 1
    _refused(capsys, path, "limit (not recorded) -> 6", "pgd_steps 40 -> 2")
    assert main(["eval", str(run), *EVAL, "--out", str(out), "--force"]) == 0
    assert json.loads(path.read_text())["n"] == 6


def test_no_pgd_leaves_the_pgd_figures_null(run, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["eval", str(run), *NO_PGD, "--no-pgd", "--out", str(out)]) == 0
    r = json.loads((out / "eval_eps0.05.json").read_text())
    assert r["pgd_acc"] is None and r["verified_but_pgd_broken"] is None
    assert r["settings"]["pgd_steps"] is None and r["settings"]["pgd_restarts"] is None
    assert 0 <= r["ibp_verified_acc"] <= r["clean_acc"] and r["etb_violation_rate"] is not None
    row = (out / "eval.md").read_text().splitlines()[2].split(" | ")
    assert row[7] == "n/a"  # the PGD column
    capsys.readouterr()
    # the plot leaves such results out (with a note), and refuses when nothing is left
    assert main(["plot", str(out), "--out", str(tmp_path / "p.png")]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == ("etbkernels plot: error: no result with a PGD accuracy to plot "
                                            "(they were evaluated with --no-pgd)")
    assert main(["eval", str(run), *EVAL, "--out", str(tmp_path / "pgd")]) == 0
    assert main(["plot", str(out), str(tmp_path / "pgd"), "--out", str(tmp_path / "p.png")]) == 0
    assert "left out 1 result(s) without PGD accuracy" in capsys.readouterr().err
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("given", [["--pgd-steps", "40"], ["--pgd-restarts", "2"], ["--pgd-step-size", "0.1"]])
def test_no_pgd_with_pgd_options_is_a_usage_error(run, given, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(run), "--no-pgd", *given])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.strip().splitlines()[-1].endswith(f"argument --no-pgd: not allowed with {given[0]}")
