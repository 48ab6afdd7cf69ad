"""pytest-benchmark's ``--benchmark-json`` output as the suite's results table (bench/results/micro.*).

bench/test_micro.py tags every benchmark with ``extra_info``: ``case`` (the method), ``flops``
(its matmul flops, where known) and ``baseline`` (True for the group's reference: the same-flops
matmul for block groups, IBP for bounds groups). Within a group (one shape or model, one
direction) every time is also given as a ratio to that baseline, measured in the same session.
"""
from __future__ import annotations

from typing import Dict, List


def rows_from_json(data: dict) -> List[dict]:
    """One row per benchmark of a ``--benchmark-json`` document: group, case, median/IQR/min
    seconds, rounds, flops, GFLOP/s, baseline flag and the ratio to the group's baseline."""
    rows = []
    for b in data.get("benchmarks", []):
        info, st = b.get("extra_info", {}), b["stats"]
        row = {"group": b.get("group") or "", "case": info.get("case", b["name"]), "median_s": st["median"],
               "iqr_s": st["iqr"], "min_s": st["min"], "rounds": st["rounds"], "flops": info.get("flops"),
               "baseline": bool(info.get("baseline", False))}
        if row["flops"]:
            row["gflops"] = row["flops"] / st["median"] / 1e9
        rows.append(row)
    base: Dict[str, float] = {r["group"]: r["median_s"] for r in rows if r["baseline"]}
    for r in rows:
        if r["group"] in base:
            r["over_baseline"] = r["median_s"] / base[r["group"]]
    return rows


def table_lines(rows: List[dict]) -> List[str]:
    """A markdown table per group, groups in first-seen order, rows in the order they ran."""
    lines: List[str] = []
    groups: Dict[str, List[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    for group, rs in groups.items():
        baseline = next((r["case"] for r in rs if r["baseline"]), None)
        lines += [f"### {group}", "",
                  f"| case | median ms | IQR ms | min ms | rounds | / {baseline or 'baseline'} | GFLOP/s |",
                  "|---|---|---|---|---|---|---|"]
        for r in rs:
            ratio = f"{r['over_baseline']:.2f}" if "over_baseline" in r else "-"
            gf = f"{r['gflops']:.1f}" if "gflops" in r else "-"
            lines.append(f"| {r['case']} | {1e3 * r['median_s']:.3f} | {1e3 * r['iqr_s']:.3f} | {1e3 * r['min_s']:.3f} "
                         f"| {r['rounds']} | {ratio} | {gf} |")
        lines.append("")
    return lines
