"""Progress of long work: a bar on a terminal, plain lines in a log or pipe (at most every interval, and
at each epoch's or eps' end), nothing with --no-progress; for train, eval and the demo."""
import io

import pytest
import torch

from etbkernels import _progress, demo
from etbkernels._progress import PlainProgress, progress, quiet
from etbkernels.cli import main
from tiny_data import fashion_folder


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_at_most_every_interval_and_at_the_end():
    clock, out = _Clock(), io.StringIO()
    bar = PlainProgress(total=250, desc="eval ibp eps=0.1", unit="images", stream=out, interval=10, clock=clock)
    for _ in range(25):  # 25 batches of 10 images, one per second
        clock.t += 1
        bar.update(10)
    bar.close()
    bar.close()  # once only
    assert out.getvalue().splitlines() == ["eval ibp eps=0.1: 100/250 images, 10 s",
                                           "eval ibp eps=0.1: 200/250 images, 20 s",
                                           "eval ibp eps=0.1: 250/250 images, 25 s"]


def test_plain_lines_of_an_iterable_with_postfix_and_leave():
    clock, out = _Clock(), io.StringIO()
    bar = PlainProgress(range(3), desc="train epoch 1/2", unit="batches", stream=out, interval=0, clock=clock)
    for i in bar:
        bar.set_postfix(loss=f"{1 / (i + 1):.2f}")
    lines = out.getvalue().splitlines()
    assert lines[0] == "train epoch 1/2: 1/3 batches, 0 s, loss=1.00"
    assert lines[-1] == "train epoch 1/2: 3/3 batches, 0 s, loss=0.33" and len(lines) == 3  # the end said once
    out = io.StringIO()  # leave=False (a transient bar): the periodic lines only, no final one
    list(PlainProgress(range(3), desc="x", stream=out, interval=1e9, leave=False, clock=clock))
    assert out.getvalue() == ""


def test_progress_picks_bar_lines_or_nothing(monkeypatch):
    tqdm = pytest.importorskip("tqdm").tqdm
    term = _Terminal()
    bar = progress(range(2), desc="t", stream=term)
    assert isinstance(bar, tqdm) and list(bar) == [0, 1] and "2/2" in term.getvalue()
    log = io.StringIO()
    assert isinstance(progress(range(2), stream=log), PlainProgress)
    monkeypatch.setattr("sys.stderr", log)  # the default stream is looked up at call time
    assert isinstance(progress(range(2)), PlainProgress)
    for silent in (progress(range(2), disable=True, stream=log), None):
        if silent is None:
            with quiet():
                silent = progress(range(2), stream=term, interval=0)
        silent.update(1)
        silent.set_postfix(a=1)
        assert list(silent) == [0, 1] and not isinstance(silent, (tqdm, PlainProgress))
    assert log.getvalue() == ""


def _tiny(data):
    return ["--dataset", "fashion-mnist", "--data-dir", str(data), "--model", "mlp", "--mlp-widths", "4",
            "--batch-size", "8", "--threads", "1", "--eps", "0.05"]


def test_train_and_eval_print_plain_progress_off_a_terminal(tmp_path, capsys, monkeypatch):
    """capsys's stderr is no terminal (like a log file or a pipe); a tiny interval stands in for ~10 s."""
    monkeypatch.setattr(_progress, "PLAIN_INTERVAL_S", 0.0)
    data = fashion_folder(tmp_path / "fashion")
    assert main(["train", *_tiny(data), "--epochs", "2", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("train epoch 1/2: 1/3 batches, 0 s, loss=")
    assert [line[:28] for line in err if line.startswith("train epoch 2/2")] == [
        f"train epoch 2/2: {i}/3 batches" for i in (1, 2, 3)]  # the epoch's end is not said twice
    assert main(["eval", str(tmp_path / "run"), "--pgd-steps", "2", "--violation-limit", "2",
                 "--violation-steps", "2", "--batch-size", "4", "--threads", "1"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("eval etb eps=0.05: 4/6 images, ") and err[-1].startswith("eval etb eps=0.05: 6/6 images")
    # --no-progress: nothing on stderr, from the loop or the evaluation
    assert main(["train", *_tiny(data), "--out", str(tmp_path / "quiet"), "--no-progress"]) == 0
    assert main(["eval", str(tmp_path / "quiet"), "--pgd-steps", "2", "--violation-limit", "0", "--threads", "1",
                 "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_demo_training_prints_plain_progress_off_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(_progress, "PLAIN_INTERVAL_S", 0.0)
    x, y = torch.rand(300, 1, 28, 28), torch.randint(0, 10, (300,))
    monkeypatch.setattr(demo, "load_mnist", lambda split: (x, y))
    demo.train_mlp(hidden=8, epochs=1, seed=0)
    lines = capsys.readouterr().err.splitlines()
    assert lines[:3] == [f"demo: train epoch 1/1: {i}/3 batches, 0 s" for i in (1, 2, 3)]
    with quiet():  # what the demo's --no-progress does
        demo.train_mlp(hidden=8, epochs=1, seed=0)
    assert capsys.readouterr().err == ""
