"""The GPU benchmark's report code (bench/bench_cuda.py), run on the committed H100 results.

bench_cuda.py itself needs a GPU; its table, verdicts and result files must still render from
what it measured, so a renamed key fails here and not on the next (rare) GPU run.
"""
from __future__ import annotations

import json
import pathlib

from bench import bench_cuda

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "bench" / "results" / "gpu_h100.json"


def test_markdown_and_verdicts_from_recorded_results(tmp_path):
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
    bench_cuda.write_results(str(tmp_path), "gpu", data, md)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".md"]
