"""The GPU benchmark's report code (bench/bench_cuda.py), run on the committed H100 results.

bench_cuda.py itself needs a GPU; its table, verdicts and result files must still render from
what it measured, so a renamed key fails here and not on the next (rare) GPU run.
"""
from __future__ import annotations

import json
import pathlib

from bench import bench_cuda

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "bench" / "results" / "gpu_h100.json"


def test_markdown_and_verdicts_from_recorded_results():
    data = json.loads(RESULTS.read_text())
    md = bench_cuda.markdown(data["meta"], data["results"])
    rows = [line for line in md.splitlines() if line.startswith("| 256,")]
    assert len(rows) == len(data["results"]) == 2
    header = next(line for line in md.splitlines() if line.startswith("| N,n,h,m"))
    assert all(r.count("|") == header.count("|") for r in rows)
    for res in data["results"]:
        v = bench_cuda.verdicts(res)
        assert v["tf32 >= 60% of bmm"] == ("PASS" if res["bmm_tf32_ms"] / res["fused_fwd_high_ms"] >= 0.6 else "FAIL")
        assert v["bwd <= 3.5x fwd"] == ("PASS" if max(res["bwd_over_fwd_high"], res["bwd_over_fwd_highest"]) <= 3.5
                                        else "FAIL")
    assert bench_cuda.device_tag(data["meta"]["device"]) == "h100"  # its results file: gpu_h100.{json,md}


def test_variant_table_renders_when_measured():
    """The recorded run predates the variants: their table appears only once they are measured, and
    their verdicts follow the numbers (here made up around the recorded ones)."""
    data = json.loads(RESULTS.read_text())
    assert "Variants" not in bench_cuda.markdown(data["meta"], data["results"])
    for res in data["results"]:
        res["fused_fwd_highest_triton_ms"] = 0.9 * min(res["chunked_cublas_fp32_ms"], res["naive_ref_fp32_ms"])
        for name, factor in (("dual", 3.6), ("waves", 3.7), ("dual_waves", 3.4)):
            res[f"bwd_high_{name}_ms"] = factor * res["fused_fwd_high_ms"]
            res[f"bwd_over_fwd_high_{name}"] = factor
    md = bench_cuda.markdown(data["meta"], data["results"])
    rows = [line for line in md.split("Variants")[1].splitlines() if line.startswith("| 256,")]
    assert len(rows) == 2 and all(r.count("|") == 9 for r in rows)
    v = bench_cuda.variant_verdicts(data["results"][0])
    assert v["fp32 (Triton exact) faster than naive ref"] == "PASS"
    assert v["tf32 bwd (dual_waves) <= 3.5x fwd"] == "PASS" and v["tf32 bwd (waves) <= 3.5x fwd"] == "FAIL"
