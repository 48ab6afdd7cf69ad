"""The same-budget comparison of training methods (issue 19): one row per trained run, from the run's
training log and its evaluations (the training mask's in the run folder, the other mask's in
``mask_etb/``), as a markdown table and a plot of clean accuracy against PGD and verified accuracy."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from .plot import _label_points

#: row order of the methods in the table and the plot
METHOD_ORDER = ("nominal", "pgd", "ibp", "crown-ibp", "etb", "etb-interp", "etb-attack")


def _load(path: Path) -> Optional[Dict]:
    return json.loads(path.read_text()) if path.is_file() else None


def collect_runs(folder: Union[str, Path]) -> List[Dict]:
    """One dict per (run, eval eps) found under ``folder``: the training log's budget figures and the
    evaluations. Runs without an evaluation are listed too (their figures None), so a partial table
    shows what is still running."""
    folder = Path(folder)
    rows = []
    for log_path in sorted(folder.glob("*/train_log.json")):
        run = log_path.parent
        log = json.loads(log_path.read_text())
        hist, cfg = log["history"], log["config"]
        images = sum(h.get("images", 0) for h in hist)
        cpu_s = hist[-1].get("budget_used_s") if hist else None
        # the training set's size, as the run recorded it (logs written before it was recorded: a full
        # first epoch saw all of it)
        train_n = log.get("train_images") or (hist[0].get("images") if len(hist) > 1 else None)
        base = {"run": run.name, "method": cfg["method"], "train_eps": cfg["eps"] if cfg["method"] != "nominal" else 0.0,
                "finished": bool(log.get("finished")), "steps": hist[-1]["steps"] if hist else 0,
                "epochs": images / train_n if train_n else None, "cpu_min": None if cpu_s is None else cpu_s / 60,
                "wall_min": sum(h["time_s"] for h in hist) / 60,
                "cpu_s_per_epoch": cpu_s / (images / train_n) if cpu_s and images and train_n else None,
                "budget_min": cfg.get("budget_cpu_minutes"), "config": cfg}
        evals = sorted(run.glob("eval_eps*.json"))
        if not evals:
            rows.append(dict(base, eps=base["train_eps"] or None, main=None, other=None))
        for e in evals:
            main = json.loads(e.read_text())
            rows.append(dict(base, eps=main["eps"], main=main, other=_load(run / "mask_etb" / e.name)))
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    rows.sort(key=lambda r: (r["eps"] or 0, order.get(r["method"], len(order)), r["run"]))
    return rows


def _pct(v) -> str:
    return "…" if v is None else f"{100 * v:.2f}%"


def _num(v, fmt) -> str:
    return "…" if v is None else format(v, fmt)


COLUMNS = ("eps", "method", "clean", "PGD", "IBP-verified", "CROWN-IBP-verified", "CROWN-forward-verified",
           "verified by any", "ETB-expected, mask ibp (− PGD)", "ETB violation, mask ibp",
           "ETB-expected, mask etb (− PGD)", "ETB violation, mask etb", "steps", "epochs", "CPU s / epoch",
           "training CPU min", "wall min")


def _expected(ev: Dict, pgd) -> str:
    """ETB-expected accuracy and, in brackets, its distance from PGD accuracy in points."""
    e = ev.get("etb_expected_acc")
    if e is None:
        return "…"
    return _pct(e) + ("" if pgd is None else f" ({100 * (e - pgd):+.2f})")


def markdown_table(rows: Sequence[Dict]) -> str:
    """The table: sound verified accuracies, ETB's expected accuracy and violation rates (NOT a certificate),
    and the budget each run used. '…' marks figures not measured (yet)."""
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        m, o = r["main"] or {}, r["other"] or {}
        cells = [_num(r["eps"], "g"), r["method"] + ("" if r["finished"] else " (training)"),
                 _pct(m.get("clean_acc")), _pct(m.get("pgd_acc")), _pct(m.get("ibp_verified_acc")),
                 _pct(m.get("crown_verified_acc")), _pct(m.get("crown_forward_verified_acc")),
                 _pct(m.get("verified_acc")), _expected(m, m.get("pgd_acc")), _pct(m.get("etb_violation_rate")),
                 _expected(o, m.get("pgd_acc")), _pct(o.get("etb_violation_rate")), str(r["steps"]),
                 _num(r["epochs"], ".2f"),
                 _num(r["cpu_s_per_epoch"], ".0f"), _num(r["cpu_min"], ".1f"), _num(r["wall_min"], ".1f")]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def spread(points: Sequence[Tuple[float, float]], min_dist: float, *, max_iter: int = 200) -> List[Tuple[float, float]]:
    """Moves points apart horizontally until every pair is at least ``min_dist`` apart (Euclidean), so that
    no marker hides another; points already far enough apart stay where they are. Deterministic."""
    pts = [list(p) for p in points]
    for _ in range(max_iter):
        moved = False
        for i in range(len(pts)):
            for j in range(i + 1, len(pts)):
                dx, dy = pts[j][0] - pts[i][0], pts[j][1] - pts[i][1]
                if dx * dx + dy * dy >= min_dist * min_dist * (1 - 1e-9):
                    continue
                need = (max(min_dist * min_dist - dy * dy, 0.0)) ** 0.5 - abs(dx)  # horizontal gap missing
                sign = 1.0 if dx > 0 or (dx == 0 and j > i) else -1.0
                pts[i][0] -= sign * need / 2 * 1.0001
                pts[j][0] += sign * need / 2 * 1.0001
                moved = True
        if not moved:
            break
    return [tuple(p) for p in pts]


def plot_budget_tradeoff(rows: Sequence[Dict], out: Union[str, Path], *, title: str = "") -> Path:
    """One panel per eps: clean accuracy (x) against PGD accuracy (filled marker) and verified-by-any accuracy
    (open marker) of each method, joined by a line; markers closer than a marker's size are moved apart
    horizontally (the shift is at most what that takes, and the caption says so)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["main"] and r["main"].get("pgd_acc") is not None]
    if not rows:
        raise ValueError("no evaluated run with a PGD accuracy to plot")
    epss = sorted({r["eps"] for r in rows})
    fig, axes = plt.subplots(1, len(epss), figsize=(6.2 * len(epss), 5.2), squeeze=False)
    colors = plt.get_cmap("tab10")
    moved, labels = 0.0, []
    for ax, eps in zip(axes[0], epss):
        rs = [r for r in rows if r["eps"] == eps]
        raw = [(100 * r["main"]["clean_acc"], 100 * r["main"][k]) for r in rs for k in ("pgd_acc", "verified_acc")]
        xs, ys = [p[0] for p in raw], [p[1] for p in raw]
        x_span, y_span = max(max(xs) - min(xs), 1.0), max(max(ys) - min(ys), 1.0)
        # spread in axes-fraction units (a marker is ~0.03 of the axes), then back to data units
        unit = [((x - min(xs)) / x_span, (y - min(ys)) / y_span) for x, y in raw]
        spread_unit = spread(unit, 0.035)
        pts = [(min(xs) + u * x_span, min(ys) + v * y_span) for u, v in spread_unit]
        moved = max(moved, max(abs(a[0] - b[0]) for a, b in zip(pts, raw)))
        for i, r in enumerate(rs):
            c = colors(METHOD_ORDER.index(r["method"]) if r["method"] in METHOD_ORDER else 9)
            (px, py), (vx, vy) = pts[2 * i], pts[2 * i + 1]
            ax.plot([px, vx], [py, vy], color=c, lw=0.8, alpha=0.6)
            ax.plot(px, py, "o", color=c, ms=8, label=f"{r['method']}: PGD")
            ax.plot(vx, vy, "o", mfc="white", mec=c, mew=1.8, ms=8, label=f"{r['method']}: verified")
            labels.append((ax, (r["method"], px, py, c)))
        ax.set_xlabel("clean accuracy (%)")
        ax.set_ylabel("accuracy at eps (%): ● PGD, ○ verified (any sound method)")
        ax.set_title(f"eps {eps:g}")
        ax.margins(x=0.15, y=0.08)
        ax.grid(alpha=0.3)
    fig.suptitle(title or "same training budget per method")
    fig.text(0.5, 0.005, f"markers closer than their size are shifted sideways (at most {moved:.2f} points of "
             "clean accuracy) so none hides another; the table holds the exact figures", ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 0.96))
    for ax in axes[0]:  # labels last: their free spots are known only in the final layout
        _label_points(fig, ax, [pt for a, pt in labels if a is ax])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
