"""Issue 19's training methods on the command line: each new --method trains an epoch and writes a
checkpoint; the eps / kappa / beta schedules and the attacks' seeds per step; options that do not
apply to the method are refused (exit 2, naming the option); eval records its PGD settings."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from etbkernels.cli import main
from etbkernels.training import load_checkpoint
from etbkernels.training import loop as T
from etbkernels.training.data import build_model
from tiny_data import fashion_folder, train_tiny

REPO = Path(__file__).resolve().parents[1]
NEW_METHODS = ("crown-ibp", "pgd", "etb-interp", "etb-attack")


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """A Fashion-MNIST IDX folder of 24 training and 6 test images (as tests/test_train_cli.py writes one)."""
    return fashion_folder(tmp_path_factory.mktemp("fashion"), 24, 6, seed=2)


_train = train_tiny


@pytest.mark.parametrize("method,option,key,value", [
    ("crown-ibp", "--beta-final", "beta_final", 0.2), ("pgd", "--pgd-train-steps", "pgd_steps", 2),
    ("etb-interp", "--beta-final", "beta_final", 0.5), ("etb-attack", "--violation-penalty", "penalty", 0.5),
])
def test_each_new_method_trains_one_epoch_and_writes_a_checkpoint(fashion, tmp_path, method, option, key, value):
    assert _train(fashion, tmp_path / "run", "--method", method, "--eps-schedule", "0,1", option, str(value)) == 0
    st = load_checkpoint(tmp_path / "run")
    assert st["epoch"] == 1 and st["step"] == 3 and st["config"]["method"] == method
    assert st["config"][key] == value and st["config"]["loss"] == T.DEFAULT_LOSS[method]
    h = st["history"][0]
    assert 0 < h["eps"] < 0.1 and math_finite(h["loss"])  # mid-ramp after 3 of 3 steps: eps(step 2) = 2/3 eps
    assert (h["beta"] is not None) == (method in ("crown-ibp", "etb-interp"))
    assert (h["kappa"] is None) == (method == "pgd")
    torch.manual_seed(0)  # the run's initialisation: training changed the weights
    init = build_model("mlp", "fashion-mnist", mlp_widths=[8]).state_dict()
    assert not torch.equal(init["2.weight"], st["model"]["2.weight"])


def math_finite(v):
    return isinstance(v, float) and np.isfinite(v)


@pytest.mark.parametrize("method", ["crown-ibp", "etb-attack"])
def test_schedules_at_their_end_points(fashion, tmp_path, monkeypatch, method):
    """3 steps per epoch, --eps-schedule 1,1: steps 0-2 warm-up (eps 0, kappa 1, beta 1), ramp from step 3
    (eps 0, kappa 1, beta 1 at its start) to step 6 (eps, kappa, beta-final reached), constant after;
    the attacks' seed is seed * 1000003 + step."""
    seen = []
    forward = T._Objective.forward

    def record(self, x, y, eps, kappa, beta, seed):
        seen.append((eps, kappa, beta, seed))
        return forward(self, x, y, eps, kappa, beta, seed)

    monkeypatch.setattr(T._Objective, "forward", record)
    extra = ["--beta-final", "0.2"] if method == "crown-ibp" else []
    assert _train(fashion, tmp_path / "run", "--method", method, "--eps-schedule", "1,1", "--epochs", "3",
                  "--kappa", "0.4", "--seed", "5", *extra) == 0
    assert len(seen) == 9
    beta_end = 0.2 if method == "crown-ibp" else 0.0
    for step, (eps, kappa, beta, seed) in enumerate(seen):
        t = min(max(step - 3, 0) / 3, 1.0)
        assert eps == pytest.approx(0.1 * t) and kappa == pytest.approx(1 - 0.6 * t)
        assert beta == pytest.approx(1 + (beta_end - 1) * t) and seed == 5 * 1_000_003 + step
    assert seen[3][:3] == (0.0, 1.0, 1.0) and seen[6][:3] == (pytest.approx(0.1), pytest.approx(0.4), beta_end)
    hist = load_checkpoint(tmp_path / "run")["history"]
    want_beta = [1.0, 1 + (beta_end - 1) * 2 / 3, beta_end] if method == "crown-ibp" else [None] * 3
    assert [h["beta"] for h in hist] == [pytest.approx(b) if b is not None else None for b in want_beta]


@pytest.mark.parametrize("argv,message", [
    (["--method", "etb", "--beta-final", "0.5"], "argument --beta-final: applies to --method crown-ibp or etb-interp only"),
    (["--method", "ibp", "--pgd-train-steps", "3"], "argument --pgd-train-steps: applies to --method pgd or etb-attack"),
    (["--method", "crown-ibp", "--pgd-train-step-size", "0.01"], "argument --pgd-train-step-size: applies to"),
    (["--method", "pgd", "--violation-penalty", "2"], "argument --violation-penalty: applies to --method etb-attack"),
    (["--method", "crown-ibp", "--loss", "release"], "argument --loss: applies to --method etb or ibp only"),
    (["--method", "pgd", "--pgd-train-steps", "0"], "argument --pgd-train-steps: expected an integer >= 1, got '0'"),
    (["--method", "pgd", "--pgd-train-step-size", "-0.1"], "argument --pgd-train-step-size: expected a finite number > 0"),
    (["--method", "crown-ibp", "--beta-final", "1.5"], "argument --beta-final: expected a number in [0, 1]"),
    (["--method", "etb-attack", "--violation-penalty", "nan"], "argument --violation-penalty: expected a finite number >= 0"),
    (["--method", "crown"], "argument --method: invalid choice: 'crown'"),
])
def test_bad_train_options_exit_2_naming_the_option(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(tmp_path / "x"), *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_train_config_refusals():
    """The API refuses what the command line refuses (a config from a script or a checkpoint)."""
    for kw, message in ((dict(method="pgd", loss="release"), "method pgd trains with loss 'pgd' only"),
                        (dict(method="crown-ibp", beta_final=1.5), "beta_final must be in [0, 1]"),
                        (dict(method="pgd", pgd_steps=0), "pgd_steps must be an integer >= 1"),
                        (dict(method="pgd", pgd_step_size=0.0), "pgd_step_size must be a finite number > 0"),
                        (dict(method="etb-attack", penalty=-1.0), "penalty must be a finite number >= 0")):
        with pytest.raises(ValueError) as exc:
            T.TrainConfig(out="unused", **kw)
        assert message in str(exc.value)


def test_eval_records_the_pgd_settings(fashion, tmp_path):
    """Every result holds steps, restarts, the step size (given and used) and the any-step rule."""
    run = tmp_path / "run"
    assert _train(fashion, run, "--method", "pgd", "--pgd-train-steps", "2") == 0
    common = ["--eps", "0.1", "--violation-limit", "0", "--threads", "1", "--no-progress"]
    assert main(["eval", str(run), *common, "--pgd-steps", "3", "--pgd-restarts", "2", "--out", str(tmp_path / "a")]) == 0
    s = json.loads((tmp_path / "a" / "eval_eps0.1.json").read_text())["settings"]
    assert s["pgd_steps"] == 3 and s["pgd_restarts"] == 2 and s["pgd_any_step"] is True
    assert s["pgd_step_size"] is None and s["pgd_step_size_used"] == pytest.approx(max(2.5 * 0.1 / 3, 0.1 / 4))
    assert main(["eval", str(run), *common, "--pgd-step-size", "0.01", "--out", str(tmp_path / "b")]) == 0
    s = json.loads((tmp_path / "b" / "eval_eps0.1.json").read_text())["settings"]
    assert s["pgd_step_size"] == s["pgd_step_size_used"] == 0.01 and s["pgd_steps"] == 40
    assert main(["eval", str(run), *common, "--no-pgd", "--out", str(tmp_path / "c")]) == 0
    s = json.loads((tmp_path / "c" / "eval_eps0.1.json").read_text())["settings"]
    assert s["pgd_any_step"] is None and s["pgd_step_size_used"] is None


def test_timing_script_prints_a_row_per_method(capsys):
    """scripts/time_training_methods.py (the cost table of docs/training.md) runs, one row per method."""
    spec = importlib.util.spec_from_file_location("time_training_methods", REPO / "scripts" / "time_training_methods.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    try:
        assert mod.main(["--model", "mlp", "--batch-size", "4", "--repeats", "1", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)  # the script sets the process's thread count
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "method" not in line]
    assert [r.split("|")[1].strip() for r in rows] == list(mod.ORDER) and set(mod.ORDER) == set(T.METHODS)
    assert all(float(r.split("|")[2]) > 0 for r in rows)
