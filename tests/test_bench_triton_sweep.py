"""bench/triton_sweep.py's code paths, run in Triton's interpreter on CPU with small tiles, so a
broken call or key fails here and not in the next (rare) GPU run. Timings are not looked at."""
from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")
from bench import triton_sweep  # noqa: E402
from etbkernels import triton_radius as tr  # noqa: E402

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("runs the kernels in Triton's interpreter (tests/conftest.py sets it without a GPU)",
                allow_module_level=True)


def test_sweep_rows_and_table():
    calls = []

    def timer(fn, reps):
        out = fn()  # runs every kernel call the sweep makes, once
        calls.append(out)
        return 1.0 + len(calls)

    tile = "16,16,16,4,2"
    rows = triton_sweep.sweep_shape(tr, 3, 20, 17, 18, 1, [tile], [tile], [tile], True, [tile], timer=timer,
                                    device="cpu", tiles_tf32x3=[tile])
    assert [r for r in rows if "error" in r] == []
    kinds = [r["dtype"] for r in rows]
    assert kinds[:4] == ["float32", "bfloat16", "float32 exact", "float32 tf32x3"]
    assert "T transpose copy (64 samples)" in kinds
    for r in (rows[0], rows[2], rows[3]):  # fp32 products in the interpreter: fp32 accumulation error only
        assert 0 <= r["max_rel_err"] < 1e-5
    tf32 = rows[0]
    assert {"fwd_ms", "grad_chunk64_ms", "grad_dual_chunk64_ms"} <= set(tf32)
    wgrad = next(r for r in rows if r["dtype"].startswith("wgrad"))
    assert {"dw1_ms", "dw2_ms", "dw1_waves_ms", "dw2_waves_ms"} <= set(wgrad)
    assert "ETBK_TRITON_SPLITS" not in os.environ and "ETBK_TRITON_TILE" not in os.environ
    md = triton_sweep.markdown({"device": "cpu", "torch": torch.__version__, "triton": "?"}, rows)
    table = [line for line in md.splitlines() if line.startswith("| 3,20,17,18")]
    header = next(line for line in md.splitlines() if line.startswith("| N,n,h,m"))
    assert len(table) == len(rows) and all(line.count("|") == header.count("|") for line in table)
