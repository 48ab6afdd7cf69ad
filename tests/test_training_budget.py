"""--budget-cpu-minutes: training stops when its steps have used the budget of process CPU time (mid-epoch if
need be); the eps / kappa schedule runs on fractions of the budget and the lr milestones on percents of it;
a finished budget run resumes to nothing; bad budgets are refused. The CPU clock is replaced by a fake one that
advances a fixed amount per reading, so the stopping step is exact."""
import json

import pytest

from etbkernels.training import load_checkpoint
from etbkernels.training import loop as T
from tiny_data import fashion_folder, train_tiny


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    return fashion_folder(tmp_path_factory.mktemp("fashion"), 24, 6, seed=3)


_train = train_tiny


@pytest.fixture
def fake_cpu_clock(monkeypatch):
    """process_time advances 0.25 s per reading: each step (two readings) costs 0.25 s of budget."""
    now = [0.0]

    def clock():
        now[0] += 0.25
        return now[0]

    monkeypatch.setattr(T.time, "process_time", clock)


def test_budget_stops_mid_epoch_and_drives_the_schedules(fashion, tmp_path, monkeypatch, fake_cpu_clock):
    seen = []
    forward = T._Objective.forward

    def record(self, x, y, eps, kappa, beta, seed):
        seen.append((eps, kappa))
        return forward(self, x, y, eps, kappa, beta, seed)

    lrs = []
    step = T.torch.optim.Adam.step

    def record_lr(self, *a, **k):
        lrs.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(T._Objective, "forward", record)
    monkeypatch.setattr(T.torch.optim.Adam, "step", record_lr)
    # budget 1.75 s = 7 steps of 0.25 s; 3 steps per epoch, so the third epoch stops after one step
    assert _train(fashion, tmp_path / "run", "--method", "ibp", "--epochs", "50", "--budget-cpu-minutes",
                  str(1.75 / 60), "--eps-schedule", "0.25,0.5", "--lr-milestones", "50", "--kappa", "0.5") == 0
    assert len(seen) == 7
    for k, (eps, kappa) in enumerate(seen):  # before step k, k * 0.25 s of 1.75 s were used
        frac = k / 7
        t = min(max(frac - 0.25, 0) / 0.5, 1)
        assert eps == pytest.approx(0.1 * t, abs=1e-4) and kappa == pytest.approx(1 - 0.5 * t, abs=1e-4)
    assert seen[0] == (0.0, 1.0) and seen[2][0] == pytest.approx(0.1 * (2 / 7 - 0.25) / 0.5, abs=1e-4)
    assert lrs == [1e-3 if k / 7 < 0.5 else 1e-4 for k in range(7)]
    st = load_checkpoint(tmp_path / "run")
    assert st["step"] == 7 and st["epoch"] == 3 and st["budget_used_s"] == pytest.approx(1.75)
    assert [h["images"] for h in st["history"]] == [24, 24, 8]
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert log["finished"] is True and log["train_images"] == 24
    # a finished budget run resumes to nothing
    assert _train(fashion, tmp_path / "run", "--method", "ibp", "--epochs", "50", "--budget-cpu-minutes",
                  str(1.75 / 60), "--eps-schedule", "0.25,0.5", "--lr-milestones", "50", "--kappa", "0.5",
                  "--resume") == 0
    assert len(seen) == 7 and load_checkpoint(tmp_path / "run")["step"] == 7


def test_epochs_cap_a_budget_run(fashion, tmp_path, fake_cpu_clock):
    assert _train(fashion, tmp_path / "run", "--method", "nominal", "--epochs", "2", "--budget-cpu-minutes", "10") == 0
    st = load_checkpoint(tmp_path / "run")
    assert st["step"] == 6 and st["budget_used_s"] == pytest.approx(1.5)
    assert json.loads((tmp_path / "run" / "train_log.json").read_text())["finished"] is True


@pytest.mark.parametrize("argv,message", [
    (["--budget-cpu-minutes", "0"], "argument --budget-cpu-minutes: expected a finite number > 0"),
    (["--budget-cpu-minutes", "inf"], "argument --budget-cpu-minutes: expected a finite number > 0"),
    (["--budget-cpu-minutes", "1", "--eps-schedule", "0.5,0.6"], "warm-up + ramp must be <= 1"),
    (["--budget-cpu-minutes", "1", "--lr-milestones", "100"], "percents of the budget (1..99)"),
])
def test_bad_budgets_are_refused_naming_the_option(fashion, tmp_path, capsys, argv, message):
    try:
        code = _train(fashion, tmp_path / "x", "--method", "ibp", *argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "x" / "checkpoint.pt").exists()
