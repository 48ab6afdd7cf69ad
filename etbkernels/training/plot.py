"""Robustness-accuracy trade-off: clean vs PGD accuracy per training method and eps."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Iterable, List, Union

MARKERS = {"nominal": "o", "ibp": "s", "etb": "^"}


def collect_results(paths: Iterable[Union[str, Path]]) -> List[Dict]:
    """Evaluation results from JSON files, or from every ``eval*.json`` in the given folders (recursive)."""
    files: List[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(p.rglob("eval*.json"))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    results = []
    for f in files:
        try:
            r = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{f}: not valid JSON: {e}") from None
        if not isinstance(r, dict) or not {"clean_acc", "pgd_acc", "method", "eps"} <= r.keys():
            raise ValueError(f"{f}: not an etbkernels evaluation result (needs clean_acc, pgd_acc, method, eps)")
        for key, none_ok in (("clean_acc", False), ("pgd_acc", True), ("eps", False)):  # else drawn as text
            v = r[key]
            if not (v is None and none_ok or type(v) in (int, float) and 0 <= v <= 1):
                raise ValueError(f"{f}: not an etbkernels evaluation result ({key} is {v!r:.40}, not a number in [0, 1])")
        if not isinstance(r["method"], str):
            raise ValueError(f"{f}: not an etbkernels evaluation result (method is {r['method']!r:.40}, not a name)")
        r["_file"] = str(f)
        results.append(r)
    if not results:
        raise ValueError("no evaluation results found (expected eval*.json files from `python -m etbkernels eval`)")
    return results


def plot_tradeoff(results: List[Dict], out: Union[str, Path], *, title: str = "") -> Path:
    """Scatter of clean accuracy (x) vs PGD accuracy (y): one marker per method, labelled with eps.

    Results without a PGD accuracy (``eval --no-pgd``) are left out; ValueError if none is left.
    """
    results = [r for r in results if r.get("pgd_acc") is not None]
    if not results:
        raise ValueError("no result with a PGD accuracy to plot (they were evaluated with --no-pgd)")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    by_method: Dict[str, List[Dict]] = {}
    for r in results:
        by_method.setdefault(r["method"], []).append(r)
    points = []
    for method, rs in sorted(by_method.items()):
        rs = sorted(rs, key=lambda r: r["eps"])
        xs, ys = [100 * r["clean_acc"] for r in rs], [100 * r["pgd_acc"] for r in rs]
        (line,) = ax.plot(xs, ys, marker=MARKERS.get(method, "x"), linestyle="", markersize=8, label=method)
        points += [(f"train {r.get('train_eps', 0):g} / eval {r['eps']:g}", xv, yv, line.get_color())
                   for r, xv, yv in zip(rs, xs, ys)]
    ax.margins(x=0.12, y=0.08)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("PGD accuracy (%) at the eval eps")
    ax.set_title(title or "robustness-accuracy trade-off")
    ax.grid(alpha=0.3)
    ax.legend(title="trained with")
    fig.tight_layout()  # final axes size first: labels are placed inside it
    _label_points(fig, ax, points)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _label_points(fig, ax, points) -> None:
    """Labels each point, in its marker's colour, at the first of a few offsets where the label
    overlaps no earlier one and stays inside the axes (points at the same PGD accuracy are
    common, e.g. 0%)."""
    fig.canvas.draw()  # positions of annotations are only known after a draw
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    placed = []
    offsets = [((4, 4), "left"), ((4, -11), "left"), ((-4, 4), "right"), ((-4, -11), "right"),
               ((4, 14), "left"), ((-4, 14), "right"), ((4, -21), "left"), ((-4, -21), "right")]
    for text, xv, yv, color in sorted(points, key=lambda p: (p[2], p[1])):
        for i, (xy, ha) in enumerate(offsets):
            ann = ax.annotate(text, (xv, yv), textcoords="offset points", xytext=xy, ha=ha, fontsize=7,
                              color=color)
            box = ann.get_window_extent(renderer)
            fits = inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1)
            if (fits and not any(box.overlaps(b) for b in placed)) or i == len(offsets) - 1:
                placed.append(box)
                break
            ann.remove()
