"""Evaluation of a trained checkpoint: clean, PGD, verified by IBP, CROWN-IBP, CROWN forward or (opt-in)
full CROWN (sound), ETB-expected (NOT a certificate).

Every number is in pixel units: the models start with their Normalize layer, and ``bounds``
takes the box in the model's input units. Bounds are computed in float64 by default (the
float32 weights converted exactly), so IBP's rounding error is far below any margin counted.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
from torch import Tensor

from .._progress import progress
from ..attacks import default_step_size, pgd_attack, pgd_output_range
from ..network.api import bounds, margin_spec
from .checkpoint import CHECKPOINT, load_run_checkpoint
from .data import DATASETS, build_model, load_dataset
from .loop import CLIP

#: column -> (header, format) of the markdown table, in order
COLUMNS = [
    ("dataset", "data", "{}"), ("model", "model", "{}"), ("method", "trained with", "{}"),
    ("train_eps", "train eps", "{:.4g}"), ("eps", "eval eps", "{:.4g}"), ("n", "images", "{}"),
    ("clean_acc", "clean", "{:.2%}"), ("pgd_acc", "PGD", "{:.2%}"), ("ibp_verified_acc", "IBP-verified (sound)", "{:.2%}"),
    ("crown_verified_acc", "CROWN-IBP-verified (sound)", "{:.2%}"),
    ("crown_forward_verified_acc", "CROWN-forward-verified (sound)", "{:.2%}"),
    ("crown_full_verified_acc", "CROWN-verified (sound; --full-crown)", "{:.2%}"),
    ("verified_acc", "verified by any (sound)", "{:.2%}"),
    ("etb_expected_acc", "ETB-expected (not a certificate)", "{:.2%}"),
    ("etb_violation_rate", "ETB violation rate", "{:.2%}"),
    ("etb_margin_width", "mean ETB margin width", "{:.4g}"), ("ibp_margin_width", "mean IBP margin width", "{:.4g}"),
    ("crown_margin_width", "mean CROWN-IBP margin width", "{:.4g}"),
    ("crown_forward_margin_width", "mean CROWN forward margin width", "{:.4g}"),
]

NOTE = ("IBP-, CROWN-IBP-, CROWN-forward- and CROWN-verified accuracy are sound (margin lower bounds > 0 in "
        "float64; full CROWN only with --full-crown, n/a otherwise); 'any' counts an image verified by one of them, "
        "which is sound too. ETB-expected robust accuracy "
        "uses ETB's expected bounds: it is NOT a certificate. ETB violation rate: fraction of (image, margin) "
        "pairs where PGD found a margin value outside the ETB interval.")


def _rebuild(state: Dict, device) -> torch.nn.Module:
    cfg = state["config"]
    model = build_model(cfg["model"], cfg["dataset"], normalize=cfg["normalize"], mlp_widths=cfg["mlp_widths"])
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def _margins(model, x: Tensor, y: Tensor, K: int) -> Tensor:
    z = model(x)
    return (margin_spec(y, K, dtype=z.dtype) @ z.unsqueeze(-1)).squeeze(-1)


def result_path(out: Union[str, Path], eps: float) -> Path:
    """Where the command line writes the result of an evaluation at ``eps``: ``OUT/eval_eps<eps>.json``."""
    return Path(out) / f"eval_eps{eps:g}.json"


def eval_settings(checkpoint: Union[str, Path], *, eps: float, limit: Optional[int] = None, batch_size: int = 200,
                  pgd_steps: Optional[int] = 40, pgd_restarts: int = 1, pgd_step_size: Optional[float] = None,
                  float64: bool = True, etb_mask: str = "ibp", violation_limit: int = 200, violation_steps: int = 20,
                  violation_restarts: int = 1, violation_tol: float = 1e-6, data_dir: Optional[str] = None,
                  seed: int = 0, full_crown: bool = False) -> Dict[str, Any]:
    """The settings that decide an evaluation's numbers, as :func:`evaluate` records them under ``"settings"``
    (JSON-ready); the command line compares them with an existing result before overwriting it.

    The device and thread count are left out: they change the numbers by rounding only. The PGD
    attack is recorded as steps, restarts, step size (as given, and as used) and ``pgd_any_step``
    (always true: an image is broken if any step of any restart misclassifies it).
    """
    ck = Path(checkpoint)
    ck = ck / CHECKPOINT if ck.is_dir() else ck
    pgd = pgd_steps is not None
    settings = {
        "checkpoint": str(ck.resolve()), "eps": eps, "limit": limit, "batch_size": batch_size,
        "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
        "pgd_steps": pgd_steps, "pgd_restarts": pgd_restarts if pgd else None,
        "pgd_step_size": pgd_step_size if pgd else None,
        # the step the attack used (the default rule resolved at this eps), and how it judges an image:
        # "any step" = broken if any point of any restart is misclassified (not only a restart's last point)
        "pgd_step_size_used": (pgd_step_size if pgd_step_size is not None else default_step_size(eps, pgd_steps))
        if pgd else None,
        "pgd_any_step": True if pgd else None,
        "bounds_dtype": "float64" if float64 else "float32", "etb_mask": etb_mask, "etb_center": "output",
        "violation_limit": violation_limit, "violation_steps": violation_steps,
        "violation_restarts": violation_restarts, "violation_tol": violation_tol, "seed": seed,
        "full_crown": full_crown,
    }
    return json.loads(json.dumps(settings))  # as a JSON file holds them (tuples -> lists, ...), for comparisons


def settings_conflict(path: Union[str, Path], settings: Dict[str, Any]) -> Optional[str]:
    """None if ``path`` does not exist or holds a result of exactly ``settings``; otherwise a
    one-line description of what differs (or of why the file is not a result to compare with).

    A setting the file does not record (a result written before it was recorded) counts as
    differing: the file may hold a larger or otherwise different evaluation.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        old = None
    if not isinstance(old, dict) or not isinstance(old.get("settings"), dict):
        return "it is not an etbkernels evaluation result"
    recorded = dict(old["settings"], eps=old.get("eps"))
    diffs = [f"{k} {recorded[k]!r} -> {v!r}" if k in recorded else f"{k} (not recorded) -> {v!r}"
             for k, v in settings.items() if k not in recorded or recorded[k] != v]
    return "settings differ: " + ", ".join(diffs) if diffs else None


def evaluate(checkpoint: Union[str, Path], *, eps: Optional[float] = None, limit: Optional[int] = None,
             batch_size: int = 200, pgd_steps: Optional[int] = 40, pgd_restarts: int = 1,
             pgd_step_size: Optional[float] = None, float64: bool = True, etb_mask: str = "ibp",
             violation_limit: int = 200, violation_steps: int = 20, violation_restarts: int = 1,
             violation_tol: float = 1e-6, data_dir: Optional[str] = None, device: str = "cpu", seed: int = 0,
             show_progress: bool = True, full_crown: bool = False, state: Optional[Dict] = None) -> Dict:
    """Evaluates a checkpoint on the test split; returns a JSON-ready dict (see :data:`COLUMNS`).

    Args:
        eps: L-inf radius in pixels (default: the ``eps`` of the run's config, which a nominal run
            stores too although it did not train with it).
        limit: first ``limit`` test images (default all).
        pgd_*: PGD against the true labels (random start, ``pgd_restarts`` restarts); an image
            counts as broken if ANY step of ANY restart misclassifies it (``pgd_attack(any_step=True)``);
            ``pgd_steps=None`` skips the attack: the PGD figures are then None, not 0.
        float64: compute the bounds (and the violation attack) in float64.
        etb_mask: ETB masks ("ibp": the authors' release; "etb": blockwise).
        violation_limit, violation_steps, violation_restarts: PGD on every margin, both
            directions, on the first ``violation_limit`` images, to measure how often the ETB
            interval misses values the network takes (violation_tol: slack for rounding).
        full_crown: also verify with full CROWN (``bounds(method="crown")``: the tightest sound
            bounds here on networks not trained for IBP, and a backward pass per hidden neuron, so
            seconds per image on a CNN: see docs/networks.md).
        state: the checkpoint already loaded by :func:`load_run_checkpoint` (else it is loaded).
        show_progress: progress per image batch on stderr (a bar on a terminal, plain lines otherwise).
    """
    if pgd_steps is not None and (pgd_steps < 1 or pgd_restarts < 1):
        raise ValueError(f"need pgd_steps >= 1 and pgd_restarts >= 1 (pgd_steps=None skips the attack), got "
                         f"{pgd_steps}, {pgd_restarts}")
    state = load_run_checkpoint(checkpoint) if state is None else state
    cfg = state["config"]
    eps = cfg["eps"] if eps is None else eps
    if not 0 <= eps <= 1:
        raise ValueError(f"eps must be in [0, 1] (pixel units), got {eps}")
    settings = eval_settings(checkpoint, eps=eps, limit=limit, batch_size=batch_size, pgd_steps=pgd_steps,
                             pgd_restarts=pgd_restarts, pgd_step_size=pgd_step_size, float64=float64,
                             etb_mask=etb_mask, violation_limit=violation_limit, violation_steps=violation_steps,
                             violation_restarts=violation_restarts, violation_tol=violation_tol,
                             data_dir=data_dir, seed=seed, full_crown=full_crown)
    dev = torch.device(device)
    model = _rebuild(state, dev)
    bdtype = torch.float64 if float64 else torch.float32
    bmodel = copy.deepcopy(model).to(bdtype)
    x_all, y_all = load_dataset(cfg["dataset"], "test", data_dir or cfg.get("data_dir"), limit)
    N = len(x_all)
    K = DATASETS[cfg["dataset"]][2]
    sums = dict(clean=0, pgd=0, ibp=0, crown=0, crown_fwd=0, crown_full=0, any=0, etb=0, verified_not_pgd=0,
                etb_w=0.0, ibp_w=0.0, crown_w=0.0, crown_fwd_w=0.0, crown_full_w=0.0)
    viol = dict(pairs=0, pairs_lower=0, images=0, n_pairs=0, n_images=0, ibp_pairs=0)
    bar = progress(desc=f"eval {cfg['method']} eps={eps:g}", total=N, unit="images", disable=not show_progress)
    for bi, s in enumerate(range(0, N, batch_size)):
        x, y = x_all[s:s + batch_size].to(dev), y_all[s:s + batch_size].to(dev)
        with torch.no_grad():
            clean = model(x).argmax(1) == y
        if pgd_steps is not None:
            _, robust = pgd_attack(model, x, y, eps, steps=pgd_steps, restarts=pgd_restarts,
                                   step_size=pgd_step_size, clip=CLIP, seed=seed + bi, any_step=True)
        else:
            robust = None
        xb = x.to(bdtype)
        spec = margin_spec(y, K, dtype=bdtype)
        with torch.no_grad():
            ib = bounds(bmodel, xb, eps, method="ibp", spec=spec, clip=CLIP)
            cb = bounds(bmodel, xb, eps, method="crown-ibp", spec=spec, clip=CLIP)
            fb = bounds(bmodel, xb, eps, method="crown-forward", spec=spec, clip=CLIP)
            eb = bounds(bmodel, xb, eps, method="etb", mask=etb_mask, spec=spec, clip=CLIP)
            full = bounds(bmodel, xb, eps, method="crown", spec=spec, clip=CLIP) if full_crown else None
        ibp_ok = (ib.lower > 0).all(1)
        crown_ok = (cb.lower > 0).all(1)
        fwd_ok = (fb.lower > 0).all(1)
        verified = ibp_ok | crown_ok | fwd_ok
        if full is not None:
            full_ok = (full.lower > 0).all(1)
            verified = verified | full_ok
            sums["crown_full"] += int(full_ok.sum())
            sums["crown_full_w"] += float(full.width.sum())
        etb_ok = (eb.lower > 0).all(1)
        sums["clean"] += int(clean.sum())
        if robust is not None:
            sums["pgd"] += int(robust.sum())
            sums["verified_not_pgd"] += int((verified & ~robust).sum())  # must stay 0 (all are sound)
        sums["ibp"] += int(ibp_ok.sum())
        sums["crown"] += int(crown_ok.sum())
        sums["crown_fwd"] += int(fwd_ok.sum())
        sums["any"] += int(verified.sum())
        sums["etb"] += int(etb_ok.sum())
        sums["etb_w"] += float(eb.width.sum())
        sums["ibp_w"] += float(ib.width.sum())
        sums["crown_w"] += float(cb.width.sum())
        sums["crown_fwd_w"] += float(fb.width.sum())
        nv = min(len(y), violation_limit - viol["n_images"])
        if nv > 0 and eps > 0:
            xv, yv = xb[:nv], y[:nv]
            lo, hi = (xv - eps).clamp(*CLIP), (xv + eps).clamp(*CLIP)
            reps = lambda t: t.repeat(2 * (K - 1))  # noqa: E731 - pgd_output_range stacks 2m copies of the batch

            def fn(xx, yy=reps(yv)):
                return _margins(bmodel, xx, yy[:xx.shape[0]], K)

            fmin, fmax = pgd_output_range(fn, lo, hi, steps=violation_steps, restarts=violation_restarts,
                                          seed=seed + bi)
            tol = violation_tol * (1 + eb.center[:nv].abs())
            out_lo = fmin < eb.lower[:nv] - tol
            out = out_lo | (fmax > eb.upper[:nv] + tol)
            viol["pairs"] += int(out.sum())
            viol["pairs_lower"] += int(out_lo.sum())
            viol["images"] += int(out.any(1).sum())
            viol["n_pairs"] += out.numel()
            viol["n_images"] += nv
            itol = violation_tol * (1 + ib.center[:nv].abs())
            viol["ibp_pairs"] += int(((fmin < ib.lower[:nv] - itol) | (fmax > ib.upper[:nv] + itol)).sum())
        bar.update(len(y))
    bar.close()
    pgd = pgd_steps is not None
    npairs = max(viol["n_pairs"], 1)
    res = {
        "checkpoint": str(checkpoint), "dataset": cfg["dataset"], "model": cfg["model"], "method": cfg["method"],
        "train_eps": cfg["eps"] if cfg["method"] != "nominal" else 0.0, "eps": eps, "n": N,
        "epochs_trained": int(state["epoch"]),
        "clean_acc": sums["clean"] / N, "pgd_acc": sums["pgd"] / N if pgd else None,
        "ibp_verified_acc": sums["ibp"] / N,
        "crown_verified_acc": sums["crown"] / N,
        "crown_forward_verified_acc": sums["crown_fwd"] / N,
        "crown_full_verified_acc": sums["crown_full"] / N if full_crown else None,
        "verified_acc": sums["any"] / N,
        "etb_expected_acc": sums["etb"] / N,
        "etb_violation_rate": viol["pairs"] / npairs if viol["n_pairs"] else None,
        "etb_violation_rate_lower": viol["pairs_lower"] / npairs if viol["n_pairs"] else None,
        "etb_violation_rate_images": viol["images"] / max(viol["n_images"], 1) if viol["n_images"] else None,
        "ibp_violation_rate": viol["ibp_pairs"] / npairs if viol["n_pairs"] else None,
        "violation_images": viol["n_images"],
        "etb_margin_width": sums["etb_w"] / (N * (K - 1)), "ibp_margin_width": sums["ibp_w"] / (N * (K - 1)),
        "crown_margin_width": sums["crown_w"] / (N * (K - 1)),
        "crown_forward_margin_width": sums["crown_fwd_w"] / (N * (K - 1)),
        "crown_full_margin_width": sums["crown_full_w"] / (N * (K - 1)) if full_crown else None,
        "verified_but_pgd_broken": sums["verified_not_pgd"] if pgd else None,
        "settings": settings,
        "note": NOTE,
    }
    return res


def markdown_table(results: List[Dict]) -> str:
    """A markdown table of evaluation results (one row each), with the soundness note under it."""
    head = "| " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    sep = "|" + "---|" * len(COLUMNS)
    rows = []
    for r in results:
        cells = []
        for key, _, fmt in COLUMNS:
            v = r.get(key)
            cells.append("n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *rows, "", NOTE])
