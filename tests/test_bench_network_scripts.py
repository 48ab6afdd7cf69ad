"""The network benchmarks that docs/networks.md quotes (bench/roofline_network.py,
chunk_size_network.py, micro_network_ops.py, lazy_tail.py, crown_full.py, bench_network.py,
memory_network.py) run on tiny inputs, measure what they claim, and write their tables where
--out says."""
import json

import pytest
import torch

from bench import bench_network, chunk_size_network, crown_full, lazy_tail, memory_network, micro_network_ops
from bench import roofline_network


def _result(out, name):
    return json.loads((out / f"{name}.json").read_text()), (out / f"{name}.md").read_text()


def test_roofline_small(tmp_path):
    assert roofline_network.main(["--quick", "--batch", "3", "--models", "small", "--out", str(tmp_path)]) == 0
    data, md = _result(tmp_path, "roofline_network")
    (row,) = data["rows"]
    m = row["methods"]
    assert all(m[k]["gflop"] > 0 and m[k]["time_s"] > 0 for k in roofline_network.METHODS)
    # per-logit and ETB(mask=ibp) do the same K backward passes; mask=etb pushes all n directions
    assert 0.9 < row["per_logit_over_etb_mask_ibp"]["flop_ratio"] < 1.3
    assert m["etb_mask_etb"]["gflop"] > 2 * m["etb_mask_ibp"]["gflop"] > 2 * m["ibp"]["gflop"]
    assert "## small CNN" in md and data["run"]["quick"] is True


def test_chunk_size_small(tmp_path):
    assert chunk_size_network.main(["--cases", "small", "--batch", "3", "--chunks", "1", "--repeats", "1",
                                    "--out", str(tmp_path)]) == 0
    data, md = _result(tmp_path, "chunk_size_network")
    (row,) = data["rows"]
    assert set(row["seconds"]) == {"1", "3", "default"}  # 3: the 1 GiB rule's chunk, capped by the batch
    assert row["default_chunk"] == 3 and row["memory_chunk"] == 3
    assert "| small | 3 |" in md


def test_chunk_plan(tmp_path):
    """The per-model chunk table that docs/networks.md quotes: the CPU cap never exceeds the
    memory rule and is below it for every zoo model."""
    assert chunk_size_network.main(["--plan-only", "--out", str(tmp_path)]) == 0
    data, md = _result(tmp_path, "chunk_plan_network")
    plan = {r["model"]: r for r in data["plan"]}
    assert set(plan) == set(chunk_size_network.PLAN_MODELS)
    for r in plan.values():
        assert all(1 <= c < m for c, m in zip(r["cpu_default_chunk"], r["memory_chunk"]))
    assert plan["large"]["largest_numel_per_sample"] > plan["medium"]["largest_numel_per_sample"]
    assert "| medium |" in md


def test_micro_network_ops_quick(tmp_path):
    assert micro_network_ops.main(["--quick", "--out", str(tmp_path)]) == 0
    data, md = _result(tmp_path, "micro_network_ops")
    assert [tuple(r["shape"]) for r in data["rows"]] == micro_network_ops.SHAPES[:1]
    assert len(data["taps"]) == 1 and len(data["transposes"]) == 2 and data["transpose_images"] == 32
    assert all(r["abs_sum_ms"] > 0 and r["vector_norm_ms"] > 0 for r in data["rows"])
    assert all(r[k] > 0 for r in data["taps"] for k in ("reshape_mm_ms", "matmul_w_grad_ms", "matmul_w_frozen_ms"))
    assert all(r["conv_transpose_ms"] > 0 and r["fold_ms"] > 0 for r in data["transposes"])
    assert "on 32 channels-last images" in md


def test_transpose_by_fold_equals_conv_transpose():
    """What ConvOp.transpose relies on, for every case the benchmark times (on a few images)."""
    for case in micro_network_ops.TRANSPOSES:
        ct, fold = micro_network_ops.transpose_fns(*case, images=2)
        torch.testing.assert_close(fold(), ct(), rtol=1e-4, atol=1e-4)


def test_lazy_tail_bench(tmp_path):
    assert lazy_tail.main(["--models", "mlp", "small", "--eps", "0.1", "--batch", "3", "--repeats", "1",
                           "--out", str(tmp_path)]) == 0
    data, md = _result(tmp_path, "lazy_tail")
    rows = {r["model"]: r for r in data["rows"]}
    assert rows["mlp"]["tail_start"] == 0 and rows["small"]["tail_start"] is None
    for r in rows.values():
        assert r["max_rel_radius_diff"] < 1e-4  # the same bounds either way (float32)
        assert all(r[k] > 0 for k in ("full", "lazy", "full_fwd_bwd", "lazy_fwd_bwd"))
    assert "| mlp | 0.1 | 0 (3) |" in md


def test_crown_full_bench(tmp_path):
    assert crown_full.main(["--quick", "--out", str(tmp_path)]) == 0  # the small CNN, batch 1
    data, md = _result(tmp_path, "crown_full")
    (row,) = data["rows"]
    w, f = row["width"], row["gflop"]
    # the same bounds both ways, far fewer flops on windows; the sound widths in their known order
    assert abs(w["crown"] - w["crown_dense"]) <= 1e-5 * w["crown"]
    assert f["crown_dense"] > 10 * f["crown"] > 0
    assert w["crown"] < w["crown_forward"] < w["crown_ibp"] < w["ibp"]
    assert all(t > 0 for t in row["time_s"].values())
    assert "| small | 0.1 | 1 | CROWN, dense rows |" in md and "Windowed over dense rows" in md


@pytest.mark.parametrize("frozen", [False, True])
def test_bench_network_quick(tmp_path, frozen):
    assert bench_network.main(["--quick", "--out", str(tmp_path)] + (["--frozen"] if frozen else [])) == 0
    data, md = _result(tmp_path, "bench_network_frozen" if frozen else "bench_network")
    (row,) = data["rows"]
    assert row["model"] == "small" and row["batch"] == 4
    assert ("per_logit_fwd_bwd" in row) is not frozen  # no backward timings for a frozen model
    # the fast path and the per-logit algorithm agree (the first note quotes their difference)
    assert float(data["notes"][0].rsplit(" ", 1)[1]) < 1e-4
    assert "| small | 4 |" in md


def test_memory_network_quick(tmp_path):
    assert memory_network.main(["--quick", "--out", str(tmp_path)]) == 0
    data, md = _result(tmp_path, "memory_network")
    (row,) = data["rows"]
    assert row["model"] == "small" and row["grad"] is False
    assert 0 < row["extra_mib"] < row["peak_rss_mib"] and row["seconds"] > 0
