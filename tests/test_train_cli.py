"""The command line: train (checkpoints, exact resume, NaN stop, option errors), eval (metrics, JSON, table), plot."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from etbkernels.cli import EXIT_NONFINITE, main
from etbkernels.training import load_checkpoint
from etbkernels.training import loop as T
from tiny_data import fashion_folder

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "mnist", "--model", "small", "--limit", "96", "--batch-size", "32", "--threads", "1",
        "--no-progress"]


def _train(out, *extra):
    return main(["train", *TINY, "--out", str(out), *extra])


def _same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _same_state(a[k], b[k])
        elif isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def test_resume_is_bitwise_exact(tmp_path):
    """2 epochs straight == 1 epoch, then --resume to 2 (eps ramp and lr milestone inside the run)."""
    opts = ["--method", "etb", "--eps", "0.1", "--eps-schedule", "0.5,1", "--lr-milestones", "1", "--seed", "3"]
    assert _train(tmp_path / "a", *opts, "--epochs", "2") == 0
    assert _train(tmp_path / "b", *opts, "--epochs", "1") == 0
    one = load_checkpoint(tmp_path / "b")
    assert _train(tmp_path / "b", *opts, "--epochs", "2", "--resume") == 0
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 6
    _same_state(a["model"], b["model"])
    _same_state(a["optimizer"]["state"], b["optimizer"]["state"])
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4)
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    # the run really changed between the epochs, and the eps ramp reached eps
    assert not torch.equal(one["model"]["1.weight"], b["model"]["1.weight"])
    assert a["history"][0]["eps"] < 0.1 and a["history"][1]["eps"] == pytest.approx(0.1)


def test_checkpoint_contents_and_nothing_outside_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _train("run", "--method", "ibp", "--eps", "0.2") == 0
    assert sorted(os.listdir(tmp_path)) == ["run"]
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoint.pt", "train_log.json"]
    st = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "epoch", "step", "config", "history"} <= st.keys()
    assert st["config"]["method"] == "ibp" and st["config"]["loss"] == "ibp_paper" and st["epoch"] == 1
    assert st["history"][0]["eps"] == 0.2 and st["history"][0]["kappa"] == 0.5  # no schedule: final values
    assert isinstance(st["rng"]["torch"], torch.Tensor)
    # the model starts with MNIST's Normalize layer, so eps is in pixels
    assert torch.allclose(st["model"]["0.std"], torch.tensor([0.3081]))
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert log["history"][0]["steps"] == 3 and 0 <= log["history"][0]["train_acc"] <= 1


def test_existing_run_and_mismatched_resume(tmp_path, capsys):
    assert _train(tmp_path, "--method", "nominal") == 0
    h = load_checkpoint(tmp_path)["history"][0]
    assert h["eps"] == 0.0 and h["kappa"] is None  # nominal training uses no box (and no kappa)
    assert _train(tmp_path, "--method", "nominal") == 1
    assert "pass --resume" in capsys.readouterr().err
    assert _train(tmp_path, "--method", "ibp", "--resume", "--epochs", "2") == 1
    assert "method='nominal'/'ibp'" in capsys.readouterr().err
    assert _train(tmp_path / "none", "--resume") == 1
    assert "no checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # a usage error now, caught by the parser
        _train(tmp_path / "m0", "--lr-milestones", "0")
    assert exc.value.code == 2 and "--lr-milestones: lr milestones are epochs >= 1" in capsys.readouterr().err
    assert not (tmp_path / "m0").exists()


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    forward = T._Objective.forward

    def poisoned(self, *args):
        loss, logits = forward(self, *args)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 4 else loss), logits  # epoch 2, second batch

    monkeypatch.setattr(T._Objective, "forward", poisoned)
    assert _train(tmp_path, "--method", "etb", "--epochs", "3") == EXIT_NONFINITE
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "epoch 2" in err and "after epoch 1) is intact" in err
    st = load_checkpoint(tmp_path)
    assert st["epoch"] == 1 and all(bool(torch.isfinite(v).all()) for v in st["model"].values())
    assert not (tmp_path / "checkpoint.pt.tmp").exists()
    # the stopped (as if killed mid-epoch) run resumes and ends exactly where a clean run does
    monkeypatch.setattr(T._Objective, "forward", forward)
    (tmp_path / "checkpoint.pt.tmp").write_bytes(b"partial write of a killed save")
    assert _train(tmp_path, "--method", "etb", "--epochs", "2", "--resume") == 0
    assert _train(tmp_path / "clean", "--method", "etb", "--epochs", "2") == 0
    _same_state(load_checkpoint(tmp_path)["model"], load_checkpoint(tmp_path / "clean")["model"])
    assert not (tmp_path / "checkpoint.pt.tmp").exists()


@pytest.mark.parametrize("argv,message", [
    (["train", "--out", "x", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--out", "x", "--method", "crown"], "invalid choice: 'crown'"),
    (["train", "--out", "x", "--eps", "2"], "expected a number in [0, 1]"),
    (["train", "--out", "x", "--eps-schedule", "3"], "expected WARMUP,RAMP"),
    (["train", "--method", "etb"], "the following arguments are required: --out"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_module_entry_point_rejects_unknown_option(tmp_path):
    r = subprocess.run([sys.executable, "-m", "etbkernels", "train", "--out", str(tmp_path / "o"), "--epochs-x", "1"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and "unrecognized arguments: --epochs-x" in r.stderr
    assert not (tmp_path / "o").exists()


def test_eval_metrics_json_table_and_plot(tmp_path, capsys):
    runs = {}
    for method in ("nominal", "ibp"):
        runs[method] = tmp_path / method
        assert _train(runs[method], "--method", method, "--eps", "0.1", "--limit", "192") == 0
    for method, run in runs.items():
        assert main(["eval", str(run), "--eps", "0", "0.1", "--limit", "60", "--batch-size", "30",
                     "--pgd-steps", "5", "--violation-limit", "12", "--violation-steps", "5", "--threads", "1",
                     "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "ETB-expected (not a certificate)" in table and "IBP-verified (sound)" in table
    for run in runs.values():
        r0 = json.loads((run / "eval_eps0.json").read_text())
        r1 = json.loads((run / "eval_eps0.1.json").read_text())
        assert r0["n"] == r1["n"] == 60
        # at eps 0 every notion of accuracy is the clean one, and the intervals have width ~0
        assert r0["pgd_acc"] == r0["ibp_verified_acc"] == r0["crown_verified_acc"] == r0["crown_forward_verified_acc"] \
            == r0["verified_acc"] == r0["etb_expected_acc"] == r0["clean_acc"]
        for key in ("etb", "ibp", "crown", "crown_forward"):
            assert r0[f"{key}_margin_width"] < 1e-9
        # sound IBP: verified <= PGD-robust <= clean, never violated by the attack
        assert r1["ibp_verified_acc"] <= r1["pgd_acc"] <= r1["clean_acc"]
        assert max(r1["ibp_verified_acc"], r1["crown_verified_acc"], r1["crown_forward_verified_acc"]) \
            <= r1["verified_acc"] <= r1["pgd_acc"]
        assert r1["verified_but_pgd_broken"] == 0 and r1["ibp_violation_rate"] == 0
        assert 0 <= r1["etb_violation_rate"] <= 1 and r1["violation_images"] == 12
        assert 0 < r1["etb_margin_width"] < r1["ibp_margin_width"]
        assert r1["settings"]["bounds_dtype"] == "float64"
        assert r1["crown_full_verified_acc"] is None and r1["settings"]["full_crown"] is False  # opt-in
    # full CROWN (opt-in): sound, so within what PGD leaves robust, and counted in "any"
    full_out = tmp_path / "full"
    assert main(["eval", str(runs["ibp"]), "--eps", "0.1", "--limit", "30", "--batch-size", "30", "--pgd-steps", "5",
                 "--violation-limit", "0", "--threads", "1", "--no-progress", "--full-crown", "--out", str(full_out)]) == 0
    rf = json.loads((full_out / "eval_eps0.1.json").read_text())
    assert rf["settings"]["full_crown"] is True and rf["verified_but_pgd_broken"] == 0
    # on this small CNN full CROWN's own hidden intervals make its margins no wider than CROWN-IBP's
    # (seen, not guaranteed: the relaxation is not monotone in the intervals)
    assert 0 < rf["crown_full_margin_width"] <= rf["crown_margin_width"] + 1e-9
    assert rf["crown_full_verified_acc"] <= rf["verified_acc"] <= rf["pgd_acc"]
    assert "CROWN-verified (sound; --full-crown)" in (full_out / "eval.md").read_text()
    # PGD at eps 0.1 hurts the nominal model at least somewhat on 60 images
    nominal = json.loads((runs["nominal"] / "eval_eps0.1.json").read_text())
    assert nominal["pgd_acc"] < nominal["clean_acc"]
    assert (runs["ibp"] / "eval.md").read_text().count("\n| ") == 2

    png = tmp_path / "plots" / "tradeoff.png"
    assert main(["plot", str(tmp_path), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    bad = tmp_path / "bad" / "eval_x.json"
    bad.parent.mkdir()
    bad.write_text("{}")
    assert main(["plot", str(bad), "--out", str(tmp_path / "p.png")]) == 1
    assert "not an etbkernels evaluation result" in capsys.readouterr().err


def _write_cifar(folder, n=8):
    rng = np.random.default_rng(0)
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)


def test_cifar10_folder_train_and_normalization(tmp_path):
    data = tmp_path / "cifar-10-batches-py"
    _write_cifar(data)
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(data), "--model", "small", "--method", "ibp",
                 "--eps", "0.0078", "--batch-size", "20", "--threads", "1", "--no-progress",
                 "--out", str(tmp_path / "run")]) == 0
    st = load_checkpoint(tmp_path / "run")
    assert st["history"][0]["steps"] == 2  # 40 training images, batches of 20
    assert torch.allclose(st["model"]["0.mean"], torch.tensor([0.4914, 0.4822, 0.4465]))
    assert main(["train", "--dataset", "cifar10", "--out", str(tmp_path / "r2")]) == 1  # needs --data-dir


def test_fashion_mnist_folder_train(tmp_path):
    data = fashion_folder(tmp_path / "fashion", 24, 6, seed=1)
    assert main(["train", "--dataset", "fashion-mnist", "--data-dir", str(data), "--model", "mlp", "--mlp-widths", "32",
                 "--method", "etb", "--eps", "0.05", "--batch-size", "8", "--threads", "1", "--no-progress",
                 "--out", str(tmp_path / "run")]) == 0
    st = load_checkpoint(tmp_path / "run")
    assert st["history"][0]["steps"] == 3 and st["model"]["2.weight"].shape == (32, 784)
    assert main(["eval", str(tmp_path / "run"), "--pgd-steps", "2", "--violation-limit", "3", "--violation-steps", "2",
                 "--threads", "1", "--no-progress"]) == 0
    r = json.loads((tmp_path / "run" / "eval_eps0.05.json").read_text())
    assert r["n"] == 6 and r["dataset"] == "fashion-mnist" and r["ibp_violation_rate"] == 0


def test_tradeoff_labels_do_not_overlap():
    """Points at the same PGD accuracy (0% is common) get labels that do not cover each other."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from etbkernels.training.plot import _label_points

    fig, ax = plt.subplots(figsize=(6, 4.5))
    pts = [(f"train {e} / eval {e}", x, 0.0, "k") for e, x in [(0.1, 98.6), (0.2, 98.7), (0.3, 98.8), (0, 98.9)]]
    pts.append(("train 0.1 / eval 0.1", 95.5, 87.5, "k"))
    ax.plot([p[1] for p in pts], [p[2] for p in pts], "o")
    ax.margins(x=0.12, y=0.08)
    _label_points(fig, ax, pts)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    plt.close(fig)
    assert len(boxes) == len(pts)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
