"""IBP-verified accuracy is computed in float64 by default (docs/training.md, "Numerical safety
of verified accuracy"), and why: float32 IBP bounds round inward by many ulps."""
import copy
import importlib
import json

import pytest
import torch
from torch import nn

import etbkernels as E
from etbkernels.cli import main
from etbkernels.training.checkpoint import save_checkpoint
from etbkernels.training.data import build_model
from etbkernels.training.loop import TrainConfig
from tiny_data import write_idx

# the module, not the function etbkernels.training.evaluate that shadows it in the package
EV = importlib.import_module("etbkernels.training.evaluate")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def run(tmp_path):
    """A tiny Fashion-MNIST MLP checkpoint (float32 weights) and its 4-image test set."""
    rng = torch.Generator().manual_seed(0)
    data = tmp_path / "fashion"
    data.mkdir()
    write_idx(data / "t10k-images-idx3-ubyte.gz", torch.randint(0, 256, (4, 28, 28), generator=rng).numpy())
    write_idx(data / "t10k-labels-idx1-ubyte.gz", torch.randint(0, 10, (4,), generator=rng).numpy())
    cfg = TrainConfig(out=str(tmp_path / "run"), dataset="fashion-mnist", model="mlp", mlp_widths=[8],
                      method="ibp", eps=0.05, data_dir=str(data))
    model = build_model("mlp", "fashion-mnist", mlp_widths=[8])
    state = {"config": cfg.to_dict(), "model": model.state_dict(), "optimizer": {}, "scheduler": {}, "rng": {},
             "epoch": 1, "step": 0, "history": []}
    (tmp_path / "run").mkdir()
    save_checkpoint(state, tmp_path / "run" / "checkpoint.pt")
    return tmp_path / "run", state["model"]


def _eval_spying(monkeypatch, run_dir, *flags):
    """Runs `eval` and records (method, x dtype, model parameter dtypes, first weight) of every bounds call."""
    calls = []

    def spy(model, x, eps, **kw):
        weight = next(p for name, p in model.named_parameters() if name.endswith("weight"))
        calls.append((kw["method"], x.dtype, {p.dtype for p in model.parameters()}, weight.detach().clone()))
        return E.bounds(model, x, eps, **kw)

    monkeypatch.setattr(EV, "bounds", spy)
    argv = ["eval", str(run_dir), "--limit", "4", "--pgd-steps", "1", "--violation-limit", "0", "--threads", "1",
            "--no-progress", *flags]
    assert main(argv) == 0
    return calls, json.loads((run_dir / "eval_eps0.05.json").read_text())


def test_eval_computes_ibp_bounds_in_float64_by_default(run, monkeypatch):
    run_dir, weights = run
    calls, result = _eval_spying(monkeypatch, run_dir)
    ibp = [c for c in calls if c[0] == "ibp"]
    assert ibp and all(c[1] == torch.float64 and c[2] == {torch.float64} for c in calls)
    # the float64 model is the float32 checkpoint converted exactly, not retrained or rounded
    first = next(v for k, v in weights.items() if k.endswith("weight"))
    assert first.dtype == torch.float32 and torch.equal(ibp[0][3], first.double())
    assert result["settings"]["bounds_dtype"] == "float64"


def test_eval_float32_flag_is_what_changes_it(run, monkeypatch):
    run_dir, _ = run
    calls, result = _eval_spying(monkeypatch, run_dir, "--float32")
    assert calls and all(c[1] == torch.float32 and c[2] == {torch.float32} for c in calls)
    assert result["settings"]["bounds_dtype"] == "float32"


def test_float32_ibp_rounds_inward_float64_by_far_less():
    """The exact maximum of a Linear layer over the box is reached at a vertex. float32 IBP's
    upper bound is below it for about half the outputs, by many ulps (a 256-term sum rounded to
    nearest); float64's misses it by ~1e-16 relative, far below any margin worth counting."""
    g = torch.Generator().manual_seed(0)
    lin = nn.Linear(256, 512)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(512, 256, generator=g))
        lin.bias.copy_(torch.randn(512, generator=g))
    x, eps = torch.rand(4, 256, generator=g), 0.01
    W = lin.weight.detach().double()
    vertex = x.double()[:, None, :] + eps * torch.sign(W)  # (N, outputs, inputs): each output's maximizer
    top = (vertex * W).sum(-1) + lin.bias.detach().double()
    up32 = E.bounds(nn.Sequential(lin), x, eps, method="ibp").upper.double()
    up64 = E.bounds(nn.Sequential(copy.deepcopy(lin)).double(), x.double(), eps, method="ibp").upper
    assert (top - up32).max() > 1e-6  # inward by far more than one float32 ulp of the bound
    # relative to the sum of the terms' magnitudes (the scale of a sum's rounding error), not to
    # |top|, which can be arbitrarily close to 0
    scale = (vertex * W).abs().sum(-1) + lin.bias.detach().double().abs()
    assert ((top - up64) / scale).max() < 1e-12
