"""bench/roofline_network.py, chunk_size_network.py, micro_network_ops.py, lazy_tail.py and crown_full.py (sources
of figures in docs/networks.md) run, count the flops they claim, and write their tables."""
import json
import os
import sys

import pytest
import torch

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


@pytest.fixture
def bench_module():
    sys.path.insert(0, BENCH)
    try:
        yield __import__
    finally:
        sys.path.remove(BENCH)


def test_flop_count_of_known_ops(bench_module):
    roofline = bench_module("roofline_network")
    a, b = torch.randn(7, 5), torch.randn(5, 3)
    assert roofline.count_flops(lambda: a @ b) == 2 * 7 * 5 * 3
    x, w = torch.randn(2, 3, 9, 9), torch.randn(4, 3, 3, 3)
    # a convolution: 2 * (output numel) * (C_in * kh * kw)
    assert roofline.count_flops(lambda: torch.nn.functional.conv2d(x, w)) == 2 * (2 * 4 * 7 * 7) * 27
    xr = x.clone().requires_grad_(True)
    fwd_bwd = roofline.count_flops(lambda: torch.nn.functional.conv2d(xr, w).sum().backward())
    assert fwd_bwd == 2 * 2 * (2 * 4 * 7 * 7) * 27  # backward (grad of the input only) = forward


def test_roofline_small(bench_module, tmp_path):
    roofline = bench_module("roofline_network")
    out = tmp_path / "rl"
    assert roofline.main(["--batch", "3", "--repeats", "1", "--models", "small", "--out", str(out)]) == 0
    (row,) = json.loads(out.with_suffix(".json").read_text())["rows"]
    m = row["methods"]
    assert all(m[k]["gflop"] > 0 and m[k]["time_s"] > 0 for k in roofline.METHODS)
    # per-logit and ETB(mask=ibp) do the same K backward passes; mask=etb pushes all n directions
    assert 0.9 < row["per_logit_over_etb_mask_ibp"]["flop_ratio"] < 1.3
    assert m["etb_mask_etb"]["gflop"] > 2 * m["etb_mask_ibp"]["gflop"] > 2 * m["ibp"]["gflop"]
    assert "## small CNN" in out.with_suffix(".md").read_text()


def test_chunk_size_small(bench_module, tmp_path):
    chunks = bench_module("chunk_size_network")
    out = tmp_path / "cs"
    assert chunks.main(["--cases", "small", "--batch", "3", "--chunks", "1", "--repeats", "1",
                        "--out", str(out)]) == 0
    (row,) = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert set(row["seconds"]) == {"1", "3", "default"}  # 3: the 1 GiB rule's chunk, capped by the batch
    assert row["default_chunk"] == 3 and row["memory_chunk"] == 3
    assert "| small | 3 |" in out.with_suffix(".md").read_text()


def test_micro_network_ops(bench_module, tmp_path):
    micro = bench_module("micro_network_ops")
    out = tmp_path / "micro"
    assert micro.main(["--repeats", "1", "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    rows = data["rows"]
    assert [tuple(r["shape"]) for r in rows] == micro.SHAPES
    assert len(data["transposes"]) == len(micro.TRANSPOSES)
    assert all(r["conv_transpose_ms"] > 0 and r["fold_ms"] > 0 for r in data["transposes"])
    assert all(r["abs_sum_ms"] > 0 and r["vector_norm_ms"] > 0 for r in rows)
    taps = json.loads(out.with_suffix(".json").read_text())["taps"]
    assert len(taps) == len(micro.TAPS)
    assert all(r[k] > 0 for r in taps for k in ("reshape_mm_ms", "matmul_w_grad_ms", "matmul_w_frozen_ms"))


def test_chunk_plan(bench_module, tmp_path):
    """The per-model chunk table that docs/networks.md quotes: the CPU cap never exceeds the
    memory rule and is below it for every zoo model."""
    chunks = bench_module("chunk_size_network")
    out = tmp_path / "plan"
    assert chunks.main(["--plan-only", "--out", str(out)]) == 0
    plan = {r["model"]: r for r in json.loads(out.with_suffix(".json").read_text())["plan"]}
    assert set(plan) == set(chunks.PLAN_MODELS)
    for r in plan.values():
        assert all(1 <= c < m for c, m in zip(r["cpu_default_chunk"], r["memory_chunk"]))
    assert plan["large"]["largest_numel_per_sample"] > plan["medium"]["largest_numel_per_sample"]
    assert "| medium |" in out.with_suffix(".md").read_text()


def test_lazy_tail_bench(bench_module, tmp_path):
    lazy = bench_module("lazy_tail")
    out = tmp_path / "lt"
    assert lazy.main(["--models", "mlp", "small", "--eps", "0.1", "--batch", "3", "--repeats", "1",
                      "--out", str(out)]) == 0
    rows = {r["model"]: r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    assert rows["mlp"]["tail_start"] == 0 and rows["small"]["tail_start"] is None
    for r in rows.values():
        assert r["max_rel_radius_diff"] < 1e-4  # the same bounds either way (float32)
        assert all(r[k] > 0 for k in ("full", "lazy", "full_fwd_bwd", "lazy_fwd_bwd"))
    assert "| mlp | 0.1 | 0 (3) |" in out.with_suffix(".md").read_text()


def test_crown_full_bench(bench_module, tmp_path):
    cf = bench_module("crown_full")
    out = tmp_path / "cf"
    assert cf.main(["--models", "small", "--eps", "0.1", "--batch", "2", "--repeats", "1", "--out", str(out)]) == 0
    (row,) = json.loads(out.with_suffix(".json").read_text())["rows"]
    w, f = row["width"], row["gflop"]
    # the same bounds both ways, far fewer flops on windows; the sound widths in their known order
    assert abs(w["crown"] - w["crown_dense"]) <= 1e-5 * w["crown"]
    assert f["crown_dense"] > 10 * f["crown"] > 0
    assert w["crown"] < w["crown_forward"] < w["crown_ibp"] < w["ibp"]
    assert all(t > 0 for t in row["time_s"].values())
    text = out.with_suffix(".md").read_text()
    assert "| small | 0.1 | 2 | CROWN, dense rows |" in text and "Windowed over dense rows" in text
