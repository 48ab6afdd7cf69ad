"""Command line: ``python -m etbkernels train|eval|plot`` (``torchrun --nproc_per_node=K -m etbkernels train``).

Run ``python -m etbkernels <command> --help`` for the options; docs/training.md has examples.
eps is always in pixel units [0, 1] (the models start with their Normalize layer).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import List, Optional

EXIT_ERROR, EXIT_NONFINITE = 1, 3


def _ints(text: str) -> List[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _widths(text: str) -> List[int]:
    vals = _ints(text)
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer widths >= 1, got {text!r}")
    return vals


def _schedule(text: str):
    parts = text.split(",")
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        vals = []
    if len(vals) != 2 or min(vals) < 0 or not all(math.isfinite(v) for v in vals):
        raise argparse.ArgumentTypeError(f"expected WARMUP,RAMP (epochs >= 0, e.g. 1,5), got {text!r}")
    return vals


def _prob(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return v


def _float_above(text: str, low: float, strict: bool) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and (v > low if strict else v >= low)):
        raise argparse.ArgumentTypeError(f"expected a finite number {'>' if strict else '>='} {low:g}, got {text!r}")
    return v


def _pos_float(text: str) -> float:
    return _float_above(text, 0.0, strict=True)


def _nonneg_float(text: str) -> float:
    return _float_above(text, 0.0, strict=False)


def _positive(text: str) -> int:
    return _int_at_least(text, 1)


def _nonneg(text: str) -> int:
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        v = int(text)
    except ValueError:
        v = low - 1
    if v < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
    return v


def _device(text: str) -> str:
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} (e.g. cpu, cuda, cuda:1)") from None
    if dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu or cuda[:N], got {text!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available in this torch build or machine")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m etbkernels`` parser: subcommands train, eval and plot with their options."""
    from .training.data import DATASETS, MODELS

    p = argparse.ArgumentParser(prog="python -m etbkernels",
                                description="Robust training and evaluation with ETB (expected bounds, not "
                                            "certificates) or IBP (sound) interval bounds.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (nominal, IBP or ETB)",
                       description="Train; checkpoints go to OUT/checkpoint.pt each epoch (atomically). Under "
                                   "torchrun --nproc_per_node=K this runs DistributedDataParallel (gloo on CPU).")
    t.add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    t.add_argument("--data-dir", help="Fashion-MNIST IDX folder or CIFAR-10 cifar-10-batches-py folder")
    t.add_argument("--model", choices=MODELS, default="small")
    t.add_argument("--mlp-widths", type=_widths, default=[1024, 1024], help="hidden widths of --model mlp (1024,1024)")
    t.add_argument("--no-normalize", action="store_true", help="no Normalize layer in front of the model")
    t.add_argument("--method", choices=("nominal", "ibp", "etb"), default="etb")
    t.add_argument("--eps", type=_prob, default=0.1, help="training eps in pixel units [0, 1] (default 0.1)")
    t.add_argument("--eps-schedule", type=_schedule, default=[0.0, 0.0], metavar="WARMUP,RAMP",
                   help="epochs at eps 0, then epochs of linear ramp to --eps (kappa ramps 1 -> --kappa alongside)")
    t.add_argument("--loss", choices=("release", "ibp_paper"),
                   help="robust loss (default: release for etb, ibp_paper for ibp)")
    t.add_argument("--kappa", type=_prob, default=0.5, help="ibp_paper loss: final weight of the clean CE (0.5)")
    t.add_argument("--lam", type=_nonneg_float, default=1.0, help="release loss: weight of the robust CE (1.0)")
    t.add_argument("--temperature", type=_pos_float, default=1.0, help="release loss: normalization temperature (1.0)")
    t.add_argument("--mask", choices=("ibp", "etb"), default="ibp",
                   help="ETB masks: ibp (authors' release; fast) or etb (blockwise; ~10x slower on CNNs). "
                        "In our runs ETB-trained networks learned to defeat ETB bounds with either mask: judge "
                        "them by PGD and IBP-verified accuracy (docs/training.md, Results)")
    t.add_argument("--epochs", type=_positive, default=1)
    t.add_argument("--batch-size", type=_positive, default=128, help="global batch (split over processes)")
    t.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    t.add_argument("--lr", type=_pos_float, default=1e-3)
    t.add_argument("--momentum", type=_nonneg_float, default=0.9, help="SGD momentum (0.9)")
    t.add_argument("--weight-decay", type=_nonneg_float, default=0.0)
    t.add_argument("--lr-milestones", type=_ints, default=[], metavar="E1,E2", help="epochs at which lr *= --lr-gamma")
    t.add_argument("--lr-gamma", type=_pos_float, default=0.1)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", type=_device, default="cpu")
    t.add_argument("--threads", type=_positive, help="torch threads per process")
    t.add_argument("--limit", type=_positive, help="train on the first N training images only (tests, smoke runs)")
    t.add_argument("--out", required=True, help="output folder (checkpoint.pt, train_log.json); nothing is "
                                                 "written elsewhere")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")

    e = sub.add_parser("eval", help="evaluate a checkpoint (clean, PGD, IBP-verified, ETB-expected, violations)",
                       description="IBP-verified accuracy is sound; ETB-expected robust accuracy is NOT a certificate.")
    e.add_argument("checkpoint", help="checkpoint file or training output folder")
    e.add_argument("--eps", type=_prob, nargs="+", help="eval eps in pixels (default: the training eps)")
    e.add_argument("--limit", type=_positive, help="first N test images (default all)")
    e.add_argument("--batch-size", type=_positive, default=200)
    e.add_argument("--pgd-steps", type=_nonneg, default=40)
    e.add_argument("--pgd-restarts", type=_positive, default=1)
    e.add_argument("--pgd-step-size", type=_pos_float, help="default max(2.5 * eps / steps, eps / 4)")
    e.add_argument("--float32", action="store_true", help="bounds in float32 (default float64)")
    e.add_argument("--etb-mask", choices=("ibp", "etb"), default="ibp")
    e.add_argument("--full-crown", action="store_true", help="also verify with full CROWN (sound, the tightest "
                                                               "here; a backward pass per hidden neuron: slow)")
    e.add_argument("--violation-limit", type=_nonneg, default=200, help="images attacked per margin for the ETB "
                                                                    "violation rate (0: skip)")
    e.add_argument("--violation-steps", type=_nonneg, default=20)
    e.add_argument("--violation-restarts", type=_positive, default=1)
    e.add_argument("--data-dir")
    e.add_argument("--device", type=_device, default="cpu")
    e.add_argument("--threads", type=_positive)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", help="output folder for eval_eps<EPS>.json and eval.md (default: the checkpoint's folder)")
    e.add_argument("--no-progress", action="store_true")

    pl = sub.add_parser("plot", help="clean vs PGD accuracy plot from eval JSON files")
    pl.add_argument("inputs", nargs="+", help="eval*.json files or folders holding them (searched recursively)")
    pl.add_argument("--out", default="tradeoff.png", help="PNG file (default tradeoff.png)")
    pl.add_argument("--title", default="")
    return p


def _train(a) -> int:
    from .training.loop import NonFiniteLossError, TrainConfig, train

    cfg = TrainConfig(out=a.out, dataset=a.dataset, model=a.model, method=a.method, eps=a.eps,
                      eps_warmup=a.eps_schedule[0], eps_ramp=a.eps_schedule[1], loss=a.loss, kappa=a.kappa,
                      lam=a.lam, temperature=a.temperature, mask=a.mask, epochs=a.epochs, batch_size=a.batch_size,
                      lr=a.lr, optimizer=a.optimizer, momentum=a.momentum, weight_decay=a.weight_decay,
                      lr_milestones=a.lr_milestones, lr_gamma=a.lr_gamma, seed=a.seed, device=a.device,
                      limit=a.limit, data_dir=a.data_dir, normalize=not a.no_normalize, mlp_widths=a.mlp_widths,
                      threads=a.threads, resume=a.resume, progress=not a.no_progress)
    try:
        train(cfg)
    except NonFiniteLossError as err:
        print(f"etbkernels train: error: {err}", file=sys.stderr)
        return EXIT_NONFINITE
    return 0


def _eval(a) -> int:
    import torch

    from .training.checkpoint import check_out_folder, write_json_atomic
    from .training.evaluate import evaluate, markdown_table

    if a.threads:
        torch.set_num_threads(a.threads)
    ck = Path(a.checkpoint)
    out = check_out_folder(Path(a.out) if a.out else (ck if ck.is_dir() else ck.parent))
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for eps in a.eps or [None]:
        r = evaluate(ck, eps=eps, limit=a.limit, batch_size=a.batch_size, pgd_steps=a.pgd_steps,
                     pgd_restarts=a.pgd_restarts, pgd_step_size=a.pgd_step_size, float64=not a.float32,
                     etb_mask=a.etb_mask, violation_limit=a.violation_limit, violation_steps=a.violation_steps,
                     violation_restarts=a.violation_restarts, data_dir=a.data_dir, device=a.device, seed=a.seed,
                     show_progress=not a.no_progress, full_crown=a.full_crown)
        path = out / f"eval_eps{r['eps']:g}.json"
        write_json_atomic(path, r)
        results.append(r)
        print(f"wrote {path}")
    table = markdown_table(results)
    (out / "eval.md").write_text(table + "\n")
    print(table)
    return 0


def _plot(a) -> int:
    from .training.plot import collect_results, plot_tradeoff

    if Path(a.out).is_dir():
        raise ValueError(f"--out {a.out} is a folder; give the PNG file to write, e.g. {Path(a.out) / 'tradeoff.png'}")
    path = plot_tradeoff(collect_results(a.inputs), a.out, title=a.title)
    print(f"wrote {path}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the exit status (argparse exits with 2 on bad options)."""
    a = build_parser().parse_args(argv)
    try:
        return {"train": _train, "eval": _eval, "plot": _plot}[a.command](a)
    except (ValueError, OSError) as err:  # OSError: FileNotFoundError, FileExistsError, NotADirectoryError, ...
        msg = " ".join(str(err).split())  # one line, whatever the exception's text looks like
        print(f"etbkernels {a.command}: error: {msg}", file=sys.stderr)
        return EXIT_ERROR
