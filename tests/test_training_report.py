"""The same-budget report (etbkernels.training.report): rows from run folders (finished or still training,
with the other mask's evaluation beside), the markdown table's figures, the plot's marker spreading."""
import itertools
import json
import math
import random

import pytest

from etbkernels.training.report import collect_runs, markdown_table, plot_budget_tradeoff, spread


def _run(folder, name, method, eps, *, finished=True, images=(50_000, 25_000), cpu=480.0, evals=True, other=True):
    run = folder / name
    run.mkdir(parents=True)
    hist = [{"epoch": i + 1, "steps": 100 * (i + 1), "images": n, "time_s": 60.0, "budget_used_s": cpu * (i + 1) / len(images)}
            for i, n in enumerate(images)]
    cfg = {"method": method, "eps": eps, "dataset": "mnist", "limit": None, "budget_cpu_minutes": 8}
    (run / "train_log.json").write_text(json.dumps({"config": cfg, "history": hist, "finished": finished,
                                                    "train_images": 50_000}))
    if evals:
        main = {"eps": eps, "clean_acc": 0.97, "pgd_acc": 0.90, "ibp_verified_acc": 0.80, "crown_verified_acc": 0.81,
                "crown_forward_verified_acc": 0.82, "verified_acc": 0.83, "etb_expected_acc": 0.93,
                "etb_violation_rate": 0.04}
        (run / f"eval_eps{eps}.json").write_text(json.dumps(main))
        if other:
            (run / "mask_etb").mkdir()
            (run / "mask_etb" / f"eval_eps{eps}.json").write_text(json.dumps(dict(main, etb_violation_rate=0.125, etb_expected_acc=0.875)))


def test_rows_and_table(tmp_path):
    _run(tmp_path, "etb-attack_0.3", "etb-attack", 0.3)
    _run(tmp_path, "pgd_0.3", "pgd", 0.3, other=False)
    _run(tmp_path, "ibp_0.3", "ibp", 0.3, finished=False, evals=False)
    rows = collect_runs(tmp_path)
    assert [r["method"] for r in rows] == ["pgd", "ibp", "etb-attack"]  # the table's method order
    att = rows[2]
    assert att["epochs"] == pytest.approx(1.5) and att["cpu_min"] == pytest.approx(8.0)
    assert att["cpu_s_per_epoch"] == pytest.approx(320.0) and att["wall_min"] == pytest.approx(2.0)
    lines = markdown_table(rows).splitlines()
    assert len(lines) == 5 and all(line.count("|") == lines[0].count("|") for line in lines)
    cells = [c.strip() for c in lines[4].strip("|").split("|")]
    assert cells[:12] == ["0.3", "etb-attack", "97.00%", "90.00%", "80.00%", "81.00%", "82.00%", "83.00%",
                          "93.00% (+3.00)", "4.00%", "87.50% (-2.50)", "12.50%"]
    assert cells[12:] == ["200", "1.50", "320", "8.0", "2.0"]
    assert "ibp (training)" in lines[3] and lines[3].count("…") >= 10  # not evaluated yet
    assert [c.strip() for c in lines[2].split("|")][11:13] == ["…", "…"]  # pgd: no other-mask evaluation


def test_spread_separates_every_pair_and_leaves_far_points_alone():
    rng = random.Random(0)
    for trial in range(30):
        pts = [(rng.choice([0.0, 0.5, 0.51, 1.0]), rng.choice([0.0, 0.02, 1.0])) for _ in range(rng.randint(2, 14))]
        out = spread(pts, 0.035)
        assert [p[1] for p in out] == [p[1] for p in pts]  # moved sideways only
        for a, b in itertools.combinations(out, 2):
            assert math.dist(a, b) >= 0.035 * (1 - 1e-6)
    far = [(0.0, 0.0), (1.0, 1.0), (0.5, 0.2)]
    assert spread(far, 0.035) == far


def test_plot_writes_a_png(tmp_path):
    for m in ("nominal", "pgd", "ibp"):
        _run(tmp_path / "runs", f"{m}_0.1", m, 0.1)
    out = plot_budget_tradeoff(collect_runs(tmp_path / "runs"), tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no evaluated run"):
        plot_budget_tradeoff([], tmp_path / "q.png")
