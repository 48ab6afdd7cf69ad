"""Checkpoints (issue 21): corruption detected by sha256 digests, weights or config that do not fit the
model, old checkpoints without a digest, files that are no checkpoint, and failed saves."""
import json
import os
import zipfile

import pytest
import torch

from etbkernels.training import checkpoint as CK
from etbkernels.training.checkpoint import load_checkpoint, load_run_checkpoint, save_checkpoint, write_json_atomic
from etbkernels.training.data import build_model
from etbkernels.training.loop import TrainConfig


def run_state(**config):
    """A training checkpoint's state as training/loop.py writes it (an MLP with 4 hidden units, one Adam step)."""
    torch.manual_seed(0)
    config = {"out": "run", "dataset": "mnist", "model": "mlp", "mlp_widths": [4], "method": "ibp", "eps": 0.1,
              **config}
    cfg = TrainConfig(**config)
    model = build_model("mlp", cfg.dataset, mlp_widths=[4])
    shape = (1, 28, 28) if cfg.dataset != "cifar10" else (3, 32, 32)
    opt = torch.optim.Adam(model.parameters())
    model(torch.rand(2, *shape)).sum().backward()
    opt.step()
    return {"format": "etbkernels-train-1", "config": cfg.to_dict(), "epoch": 1, "step": 1, "model": model.state_dict(),
            "optimizer": opt.state_dict(), "scheduler": {"milestones": {}, "last_epoch": 1},
            "rng": {"torch": torch.get_rng_state()},
            "history": [{"epoch": 1, "loss": 2.3, "train_acc": 0.1, "eps": 0.1, "kappa": 0.5, "lr": 1e-3, "steps": 1,
                         "time_s": 0.5, "processes": 1}]}


def _one_line(exc_info, path, *needles):
    text = str(exc_info.value)
    assert "\n" not in text and str(path) in text, text
    for n in needles:
        assert n in text, text


def _record(path, name):
    """(offset, size) of the zip record whose name ends with ``name`` (tensor data, data.pkl)."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(name))
    raw = path.read_bytes()
    start = info.header_offset + 30 + len(info.filename.encode()) + int.from_bytes(
        raw[info.header_offset + 28:info.header_offset + 30], "little")
    return start, info.file_size


def test_round_trip_keeps_the_state_and_drops_the_digest(tmp_path):
    state = run_state()
    save_checkpoint(state, tmp_path / "checkpoint.pt")
    got = load_run_checkpoint(tmp_path)
    assert got.keys() == state.keys() and torch.equal(got["model"]["2.weight"], state["model"]["2.weight"])
    assert "digest" in torch.load(tmp_path / "checkpoint.pt", weights_only=True)


def test_flipped_bytes_in_tensor_data_name_the_tensor(tmp_path):
    """The issue's case: 16 flipped bytes inside a tensor's data loaded without any error."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(run_state(), path)
    weights = sorted(run_state()["model"])  # the records are data/0, data/1, ... in the order torch.save met them
    start, size = _record(path, "data/2")
    raw = bytearray(path.read_bytes())
    for i in range(16):
        raw[start + (i * 37) % size] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert weights  # (data/2 is model/2.weight: 0.mean, 0.std, then the first Linear)
    for load in (load_checkpoint, load_run_checkpoint):
        with pytest.raises(CK.CheckpointCorruptedError) as e:
            load(path)
        _one_line(e, path, "corrupted: tensor model/2.weight does not match its digest")
        assert isinstance(e.value, ValueError)


def test_flipped_byte_in_the_config_names_the_config(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(run_state(lr=0.25), path)
    raw = path.read_bytes()
    pos = raw.index(b"ibp_paper")  # the config's loss: a flip there still unpickles, as "ibp_pbper"
    path.write_bytes(raw[:pos + 5] + bytes([raw[pos + 5] ^ 0x03]) + raw[pos + 6:])
    with pytest.raises(CK.CheckpointCorruptedError) as e:
        load_run_checkpoint(path)
    _one_line(e, path, "corrupted: the config does not match its digest")


@pytest.mark.parametrize("case,needle", [
    ("shape", "model weights do not fit the mlp model its config builds for mnist: 2.weight is torch.float32 (5, 784), "
              "expected a float tensor of shape (4, 784)"),
    ("missing", "missing 4.bias"),
    ("dataset", "config names dataset 'imagenet', which etbkernels does not know"),
    ("model", "config names model 'vgg99', which etbkernels does not know"),
    ("eps", "config lacks 'eps'"),
    ("widths", "config has mlp_widths [0]"),
    ("optimizer", "optimizer state exp_avg of parameter 0 is (5, 784), but the parameter is (4, 784)"),
    ("rng", "RNG state is not a uint8 tensor"),
    ("epoch", "its epoch is -1"),
    ("history", "history entry 0 lacks numbers"),
])
def test_weights_or_config_that_do_not_fit_the_model(tmp_path, case, needle):
    """Wrong tensor shapes gave load_state_dict's size-mismatch RuntimeError in eval and --resume; an
    unknown dataset KeyError: 'imagenet'; a missing entry KeyError: 'eps'."""
    state = run_state()
    if case == "shape":
        state["model"]["2.weight"] = torch.zeros(5, 784)
    elif case == "missing":
        del state["model"]["4.bias"]
    elif case == "dataset":
        state["config"]["dataset"] = "imagenet"
    elif case == "model":
        state["config"]["model"] = "vgg99"
    elif case == "eps":
        del state["config"]["eps"]
    elif case == "widths":
        state["config"]["mlp_widths"] = [0]
    elif case == "optimizer":
        state["optimizer"]["state"][0]["exp_avg"] = torch.zeros(5, 784)
    elif case == "rng":
        state["rng"]["torch"] = torch.zeros(3)
    elif case == "epoch":
        state["epoch"] = -1
    else:
        state["history"] = [{"epoch": 1}]
    save_checkpoint(state, tmp_path / "checkpoint.pt")  # a valid digest: the content itself is wrong
    with pytest.raises(ValueError) as e:
        load_run_checkpoint(tmp_path)
    _one_line(e, tmp_path / "checkpoint.pt", needle)


def test_checkpoint_without_a_digest_loads_with_a_note(tmp_path, capsys):
    state = run_state()
    torch.save(state, tmp_path / "checkpoint.pt")  # as etbkernels wrote checkpoints before digests
    got = load_run_checkpoint(tmp_path)
    assert torch.equal(got["model"]["4.weight"], state["model"]["4.weight"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "carries no sha256 digest" in err and str(tmp_path / "checkpoint.pt") in err, err


def test_damaged_digest_key_is_not_taken_for_an_old_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(run_state(), path)
    raw = path.read_bytes()
    pos = raw.index(b"digest")
    path.write_bytes(raw[:pos] + b"digesT" + raw[pos + 6:])
    with pytest.raises(CK.CheckpointCorruptedError) as e:
        load_run_checkpoint(path)
    _one_line(e, path, "the key of its digest record reads 'digesT'")


def test_fifo_is_not_a_regular_file(tmp_path):
    """A FIFO named checkpoint.pt was reported as "no such checkpoint" (and opening it would block)."""
    os.mkfifo(tmp_path / "checkpoint.pt")
    for arg in (tmp_path, tmp_path / "checkpoint.pt"):
        with pytest.raises(ValueError) as e:
            load_checkpoint(arg)
        _one_line(e, tmp_path / "checkpoint.pt", "not a regular file (a FIFO)")


def test_json_or_text_file_is_not_a_checkpoint(tmp_path):
    """`eval train_log.json` said "Unsupported operand 123" (the code of '{')."""
    write_json_atomic(tmp_path / "train_log.json", {"config": {}, "history": []})
    (tmp_path / "notes.txt").write_text("hello\n")
    for name, looks in (("train_log.json", "it holds JSON text"), ("notes.txt", "it holds text")):
        with pytest.raises(ValueError) as e:
            load_checkpoint(tmp_path / name)
        _one_line(e, tmp_path / name, "not a PyTorch checkpoint", looks)
        assert "Unsupported operand" not in str(e.value)


def _in_child_with_file_size_limit(tmp_path, code):
    import subprocess
    import sys
    import textwrap

    prog = textwrap.dedent(f"""
        import resource, sys, torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_faults_checkpoint import run_state
        from etbkernels.training.checkpoint import load_checkpoint, save_checkpoint, write_json_atomic
        folder = {str(tmp_path)!r}
        save_checkpoint({{"w": torch.ones(4)}}, folder + "/checkpoint.pt")
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    """) + textwrap.dedent(code)
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_failed_save_is_an_oserror_and_leaves_no_tmp(tmp_path):
    """A full disk (here: a file size limit) during a save gave a RuntimeError traceback and left a stray .tmp."""
    out = _in_child_with_file_size_limit(tmp_path, """
        for what, write in (("ckpt", lambda: save_checkpoint({"w": torch.ones(100_000)}, folder + "/checkpoint.pt")),
                            ("json", lambda: write_json_atomic(folder + "/log.json", {"a": "x" * 100_000}))):
            try:
                write()
            except OSError as e:
                print(what, "OSError", e)
        print("kept", load_checkpoint(folder + "/checkpoint.pt")["w"].tolist())
    """)
    assert f"ckpt OSError [Errno 27] {tmp_path / 'checkpoint.pt'}: cannot write: File too large" in out, out
    assert f"json OSError [Errno 27] {tmp_path / 'log.json'}: cannot write: File too large" in out, out
    assert "kept [1.0, 1.0, 1.0, 1.0]" in out  # the previous checkpoint is intact
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt"]


def test_interrupted_save_leaves_no_tmp(tmp_path, monkeypatch):
    def interrupted(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"w": torch.ones(3)}, tmp_path / "checkpoint.pt")
    assert os.listdir(tmp_path) == []


def test_digest_covers_every_tensor_and_field(tmp_path):
    """Each top-level field and each tensor is checked on its own (a change of one names that one)."""
    path = tmp_path / "checkpoint.pt"
    state = run_state()
    save_checkpoint(state, path)
    digest = torch.load(path, weights_only=True)["digest"]
    assert set(digest["fields"]) == set(state)
    assert {"model/2.weight", "optimizer/state/0/exp_avg", "rng/torch"} <= set(digest["tensors"])
    json.dumps(digest)  # plain strings: readable by anything
