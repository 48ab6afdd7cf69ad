"""torchrun --nproc_per_node=2 (DistributedDataParallel, gloo, CPU) trains like one process with the same global batch."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from etbkernels.training import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
ARGS = ["train", "--dataset", "mnist", "--model", "small", "--method", "etb", "--eps", "0.1", "--limit", "64",
        "--batch-size", "32", "--epochs", "1", "--threads", "1", "--no-progress", "--seed", "5",
        "--optimizer", "sgd", "--lr", "0.05"]  # SGD: Adam would amplify rounding in near-zero gradients


@pytest.mark.slow
def test_torchrun_two_processes_matches_one(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    assert torchrun, "torchrun not found next to the test interpreter"
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1")
    ddp = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "etbkernels", *ARGS,
                          "--out", str(tmp_path / "ddp")], capture_output=True, text=True, cwd=REPO, env=env,
                         timeout=180)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "etbkernels", *ARGS, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=180)
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = load_checkpoint(tmp_path / "ddp"), load_checkpoint(tmp_path / "one")
    assert a["history"][0]["processes"] == 2 and b["history"][0]["processes"] == 1
    assert a["step"] == b["step"] == 2
    # the same global batches, gradients averaged over the two halves: the same model up to rounding
    for k, v in b["model"].items():
        assert torch.allclose(a["model"][k], v, rtol=1e-4, atol=1e-6), k
    assert a["history"][0]["loss"] == pytest.approx(b["history"][0]["loss"], rel=1e-5)
    # only rank 0 wrote, and only under --out
    assert sorted(os.listdir(tmp_path / "ddp")) == ["checkpoint.pt", "train_log.json"]
