"""The training loop, single process or DDP (torchrun): nominal, PGD adversarial (Madry et al.), IBP,
CROWN-IBP (Zhang et al.), ETB, and the honest ETB variants etb-interp and etb-attack (docs/training.md).

Determinism: the model is initialised from ``seed``; epoch ``e`` visits the training images in
the order ``randperm(N, generator=seed-derived(e))``, so a resumed run sees exactly the batches
an uninterrupted run would, and the attacks of pgd and etb-attack draw their random starts
from (seed, step). Checkpoints (atomic, each epoch) hold model, optimizer, scheduler,
RNG state, epoch, step and the per-epoch history; ``resume=True`` continues from them.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .._progress import progress
from ..losses import LinearRamp
from ..nn import BoundedModel
from .checkpoint import CHECKPOINT, check_out_folder, load_run_checkpoint, save_checkpoint, write_json_atomic
from .data import DATASETS, MODELS, build_model, load_dataset

METHODS = ("nominal", "ibp", "etb", "crown-ibp", "pgd", "etb-interp", "etb-attack")
#: the loss each method trains with when ``loss`` is not given; etb and ibp also accept the other of
#: "release" / "ibp_paper", the others only their own
DEFAULT_LOSS = {"nominal": None, "ibp": "ibp_paper", "etb": "release", "crown-ibp": "ibp_paper", "pgd": "pgd",
                "etb-interp": "ibp_paper", "etb-attack": "etb_attack"}
#: methods whose margin lower bound is interpolated with IBP's by the beta schedule (1 -> beta_final)
BETA_METHODS = ("crown-ibp", "etb-interp")
#: methods that attack each training batch with PGD (pgd_steps, pgd_step_size)
ATTACK_METHODS = ("pgd", "etb-attack")
#: methods whose bounds are ETB's (mask applies)
ETB_METHODS = ("etb", "etb-interp", "etb-attack")
#: config fields a resumed run must share with the checkpoint (the rest may change, e.g. epochs)
_RESUME_KEYS = ("dataset", "model", "method", "eps", "eps_warmup", "eps_ramp", "loss", "kappa", "lam",
                "temperature", "mask", "batch_size", "lr", "optimizer", "momentum", "weight_decay",
                "lr_milestones", "lr_gamma", "seed", "limit", "normalize", "mlp_widths", "beta_final", "pgd_steps",
                "pgd_step_size", "penalty", "budget_cpu_minutes")
#: resolution of the budget-mode schedules (positions per budget)
_BUDGET_UNITS = 100_000
CLIP = (0.0, 1.0)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss or parameter; the last good checkpoint is left as it was."""


@dataclass
class TrainConfig:
    """Everything a run depends on (stored in the checkpoint). eps is in pixel units [0, 1]."""

    out: str
    dataset: str = "mnist"
    model: str = "small"
    method: str = "etb"
    eps: float = 0.1
    eps_warmup: float = 0.0          # epochs at eps 0 (kappa 1) before the ramp (budget mode: fraction of the budget)
    eps_ramp: float = 0.0            # epochs of linear ramp 0 -> eps (kappa 1 -> kappa) (budget mode: fraction)
    loss: Optional[str] = None       # None: DEFAULT_LOSS[method]; etb and ibp: "release" | "ibp_paper"
    kappa: float = 0.5
    beta_final: float = 0.0          # crown-ibp, etb-interp: beta ramps 1 -> beta_final alongside eps
    pgd_steps: int = 10              # pgd, etb-attack: PGD steps on each training batch
    pgd_step_size: Optional[float] = None  # None: max(2.5 * eps / steps, eps / 4) at the step's eps
    penalty: float = 1.0             # etb-attack: weight of mean relu(ETB lower - attacked margin)
    lam: float = 1.0
    temperature: float = 1.0
    mask: str = "ibp"                # ETB masks: "ibp" (authors' release, faster) or "etb"
    epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_milestones: List[int] = field(default_factory=list)  # epochs (budget mode: percent of the budget)
    lr_gamma: float = 0.1
    seed: int = 0
    # budget mode: train until the training steps have used this many minutes of the process's CPU time
    # (all threads; not wall time, so other load on the machine does not shrink a run's budget); epochs
    # is then a cap, and the schedules are fractions of the budget
    budget_cpu_minutes: Optional[float] = None
    device: str = "cpu"
    limit: Optional[int] = None
    data_dir: Optional[str] = None
    normalize: bool = True
    mlp_widths: List[int] = field(default_factory=lambda: [1024, 1024])
    threads: Optional[int] = None
    resume: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {self.dataset!r}")
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.loss is None and self.method != "nominal":
            self.loss = DEFAULT_LOSS[self.method]
        if self.method in ("nominal", "ibp", "etb"):
            if self.loss not in (None, "release", "ibp_paper"):
                raise ValueError(f"loss must be 'release' or 'ibp_paper', got {self.loss!r}")
        elif self.loss != DEFAULT_LOSS[self.method]:
            raise ValueError(f"method {self.method} trains with loss {DEFAULT_LOSS[self.method]!r} only, got "
                             f"{self.loss!r} (loss applies to methods etb and ibp)")
        if not 0 <= self.beta_final <= 1:
            raise ValueError(f"beta_final must be in [0, 1], got {self.beta_final}")
        if isinstance(self.pgd_steps, bool) or not isinstance(self.pgd_steps, int) or self.pgd_steps < 1:
            raise ValueError(f"pgd_steps must be an integer >= 1, got {self.pgd_steps!r}")
        if self.pgd_step_size is not None and not 0 < self.pgd_step_size < math.inf:
            raise ValueError(f"pgd_step_size must be a finite number > 0 or None, got {self.pgd_step_size}")
        if not 0 <= self.penalty < math.inf:
            raise ValueError(f"penalty must be a finite number >= 0, got {self.penalty}")
        if not 0 <= self.eps <= 1:
            raise ValueError(f"eps must be in [0, 1] (pixel units), got {self.eps}")
        if self.eps_warmup < 0 or self.eps_ramp < 0:
            raise ValueError("eps warm-up and ramp must be >= 0 epochs")
        if not 0 <= self.kappa <= 1:
            raise ValueError(f"kappa must be in [0, 1], got {self.kappa}")
        if self.mask not in ("ibp", "etb"):
            raise ValueError(f"mask must be 'ibp' or 'etb', got {self.mask!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.epochs < 1 or self.batch_size < 1 or not 0 < self.lr < math.inf:
            raise ValueError("need epochs >= 1, batch size >= 1 and a finite lr > 0")
        if not (0 < self.temperature < math.inf and 0 <= self.lam < math.inf):
            raise ValueError(f"need a finite temperature > 0 and lam >= 0, got {self.temperature}, {self.lam}")
        self.lr_milestones = sorted(int(m) for m in self.lr_milestones)
        if self.lr_milestones and self.lr_milestones[0] < 1:
            raise ValueError(f"lr milestones are epochs >= 1 (lr changes after that many epochs), got {self.lr_milestones}")
        if self.budget_cpu_minutes is not None:
            if isinstance(self.budget_cpu_minutes, bool) or not 0 < self.budget_cpu_minutes < math.inf:
                raise ValueError(f"budget_cpu_minutes must be a finite number > 0 or None, got {self.budget_cpu_minutes!r}")
            if self.eps_warmup + self.eps_ramp > 1:
                raise ValueError("with a CPU-time budget the eps schedule is in fractions of the budget: warm-up + "
                                 f"ramp must be <= 1, got {self.eps_warmup} + {self.eps_ramp}")
            if self.lr_milestones and self.lr_milestones[-1] > 99:
                raise ValueError("with a CPU-time budget lr milestones are percents of the budget (1..99), got "
                                 f"{self.lr_milestones}")
        self.mlp_widths = [int(w) for w in self.mlp_widths]

    def to_dict(self) -> Dict:
        """The configuration as plain JSON-ready values (saved with checkpoints and run logs)."""
        return dataclasses.asdict(self)


def _dist(device: str) -> Tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun (WORLD_SIZE > 1).

    gloo for CPU training, nccl for CUDA devices.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.device(device).type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _Objective(nn.Module):
    """forward(x, y, eps, kappa, beta, seed) -> (loss, logits): what DDP wraps, so gradients are all-reduced.

    ``beta``: the interpolation weight of crown-ibp / etb-interp; ``seed``: the random start of the
    attacks of pgd / etb-attack (the attacks run with the model in eval mode: see
    :meth:`BoundedModel.robust_loss`).
    """

    def __init__(self, bm: BoundedModel, cfg: TrainConfig):
        super().__init__()
        self.bm, self.cfg = bm, cfg

    def forward(self, x: Tensor, y: Tensor, eps: float, kappa: float, beta: float = 1.0,
                seed: int = 0) -> Tuple[Tensor, Tensor]:
        cfg = self.cfg
        if cfg.method == "nominal":
            logits = self.bm(x)
            return nn.functional.cross_entropy(logits, y), logits
        attack = dict(attack_steps=cfg.pgd_steps, attack_step_size=cfg.pgd_step_size, seed=seed)
        if cfg.method == "pgd":
            return self.bm.robust_loss(x, y, eps, loss="pgd", **attack)
        if cfg.method == "etb-attack":
            return self.bm.robust_loss(x, y, eps, loss="etb_attack", kappa=kappa, penalty=cfg.penalty, **attack)
        if cfg.method in BETA_METHODS:
            return self.bm.robust_loss(x, y, eps, loss="ibp_paper", kappa=kappa, beta=beta)
        return self.bm.robust_loss(x, y, eps, loss=cfg.loss, lam=cfg.lam, temperature=cfg.temperature, kappa=kappa)


def build_objective(cfg: TrainConfig, model: nn.Module) -> nn.Module:
    """The module whose ``forward(x, y, eps, kappa, beta, seed)`` returns ``(loss, logits)`` of one
    training step of ``cfg.method`` for ``model`` (pixels clipped to [0, 1]); :func:`train` wraps it in DDP."""
    bound_method = cfg.method if cfg.method in ("ibp", "crown-ibp") else "etb"  # nominal, pgd: no bounds
    bm = BoundedModel(model, method=bound_method, mask=cfg.mask if bound_method == "etb" else None, clip=CLIP)
    return _Objective(bm, cfg)


def _optimizer(cfg: TrainConfig, params):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _batches(n: int, batch: int, world: int, rank: int, seed: int, epoch: int) -> List[Tensor]:
    """This rank's index batches for one epoch: global batches of ``batch`` images, split by rank.

    Each global batch is trimmed to a multiple of the world size so every rank has equally
    many samples (then DDP's mean of per-rank means equals the global mean).
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    out = []
    for i in range(0, n, batch):
        idx = perm[i:i + batch]
        idx = idx[:len(idx) - len(idx) % world]
        if len(idx):
            out.append(idx[rank::world])
    return out


def _all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def format_history(history: List[Dict]) -> str:
    """Markdown summary table of the per-epoch history."""
    lines = ["| epoch | loss | train acc | eps | kappa | lr | time (s) |", "|---|---|---|---|---|---|---|"]
    for h in history:
        lines.append(f"| {h['epoch']} | {h['loss']:.4f} | {100 * h['train_acc']:.2f}% | {h['eps']:.4g} | "
                     f"{'-' if h['kappa'] is None else format(h['kappa'], '.3g')} | {h['lr']:.3g} | {h['time_s']:.1f} |")
    return "\n".join(lines)


def train(cfg: TrainConfig, *, log: Callable[[str], None] = print,
          loss_hook: Optional[Callable[[Tensor, int, int], Tensor]] = None) -> List[Dict]:
    """Trains as ``cfg`` says; returns the per-epoch history. Only rank 0 writes, and only under ``cfg.out``.

    ``loss_hook(loss, epoch, step) -> loss`` is a test hook (e.g. to inject a NaN).
    Raises :class:`NonFiniteLossError` on a NaN/Inf loss or parameter (checkpoint left intact).
    """
    rank, world = _dist(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    if world > 1 and device.type == "cuda" and device.index is None:  # one GPU per process under torchrun
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    out = check_out_folder(cfg.out)
    ckpt_path = out / CHECKPOINT
    if world > 1 and cfg.budget_cpu_minutes is not None:  # each rank would stop at its own step
        raise ValueError("a CPU-time budget needs a single process (not torchrun)")
    if cfg.batch_size % world:
        raise ValueError(f"batch size {cfg.batch_size} must be a multiple of the number of processes ({world})")
    if ckpt_path.exists() and not cfg.resume:
        raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue that run, or choose another --out")
    state = None
    if cfg.resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        state = load_run_checkpoint(ckpt_path)
        saved = state["config"]
        # a key the checkpoint lacks was added later: its run used the default
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        diff = {k: (saved.get(k, defaults[k]), getattr(cfg, k)) for k in _RESUME_KEYS
                if saved.get(k, defaults[k]) != getattr(cfg, k)}
        if diff:
            raise ValueError("--resume: these options differ from the checkpoint's run (checkpoint, now): "
                             + ", ".join(f"{k}={a!r}/{b!r}" for k, (a, b) in diff.items()))

    torch.manual_seed(cfg.seed)
    x, y = load_dataset(cfg.dataset, "train", cfg.data_dir, cfg.limit)
    model = build_model(cfg.model, cfg.dataset, normalize=cfg.normalize, mlp_widths=cfg.mlp_widths).to(device)
    objective = build_objective(cfg, model)
    opt = _optimizer(cfg, model.parameters())
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=cfg.lr_milestones, gamma=cfg.lr_gamma)
    start_epoch, step, history = 0, 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(_sched_from_plain(state["scheduler"]))
        torch.set_rng_state(state["rng"]["torch"])
        start_epoch, step, history = int(state["epoch"]), int(state["step"]), list(state["history"])
        if rank == 0:
            log(f"resuming {ckpt_path} after epoch {start_epoch} (step {step})")
    wrapped = objective
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(objective, device_ids=None if device.type == "cpu" else [device])
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    n = len(x)
    spe = len(_batches(n, cfg.batch_size, world, rank, cfg.seed, 0))  # optimizer steps per epoch
    budget_s = None if cfg.budget_cpu_minutes is None else 60.0 * cfg.budget_cpu_minutes
    used_s = float(state.get("budget_used_s", 0.0)) if state is not None else 0.0
    # the ramps run on optimizer steps, or in budget mode on _BUDGET_UNITS positions per budget
    units = spe if budget_s is None else _BUDGET_UNITS
    warm, ramp = round(cfg.eps_warmup * units), round(cfg.eps_ramp * units)

    def position() -> int:
        return step if budget_s is None else min(int(_BUDGET_UNITS * used_s / budget_s), _BUDGET_UNITS)

    def budget_lr() -> float:  # lr at the current budget fraction (milestones in percent)
        passed = sum(100 * used_s >= m * budget_s for m in cfg.lr_milestones)
        return cfg.lr * cfg.lr_gamma ** passed
    eps_at = LinearRamp(0.0, cfg.eps, warm, ramp)
    kappa_at = LinearRamp(1.0, cfg.kappa, warm, ramp)
    beta_at = LinearRamp(1.0, cfg.beta_final, warm, ramp)  # Zhang et al.: CROWN-IBP's weight, 1 -> 0 over the ramp
    if rank == 0 and state is None:
        log(f"training {cfg.model} on {cfg.dataset} ({n} images, {world} process(es)), method {cfg.method}"
            + (f", loss {cfg.loss}, eps {cfg.eps} (warm-up {warm} steps, ramp {ramp} steps)"
               if cfg.method != "nominal" and budget_s is None else "")
            + (f", loss {cfg.loss}, eps {cfg.eps} (warm-up {cfg.eps_warmup:g}, ramp {cfg.eps_ramp:g} of the budget)"
               if cfg.method != "nominal" and budget_s is not None else "")
            + (f", budget {cfg.budget_cpu_minutes:g} CPU minutes" if budget_s is not None else "")
            + (f", beta 1 -> {cfg.beta_final:g}" if cfg.method in BETA_METHODS else "")
            + (f", {cfg.pgd_steps} PGD steps per batch" if cfg.method in ATTACK_METHODS else ""))

    stopped = "epochs"
    for epoch in range(start_epoch, cfg.epochs):
        if budget_s is not None and used_s >= budget_s:
            stopped = "budget"
            break
        model.train()
        t0 = time.perf_counter()
        tot = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
        batches = _batches(n, cfg.batch_size, world, rank, cfg.seed, epoch)
        bar = progress(batches, desc=f"train epoch {epoch + 1}/{cfg.epochs}", unit="batches",
                       disable=not cfg.progress or rank != 0)
        for idx in bar:
            if budget_s is not None:
                if used_s >= budget_s:
                    break
                for g in opt.param_groups:
                    g["lr"] = budget_lr()
            c0 = time.process_time()
            xb, yb = x[idx].to(device), y[idx].to(device)
            pos = position()
            eps_t, kappa_t = eps_at(pos), kappa_at(pos)
            loss, logits = wrapped(xb, yb, eps_t, kappa_t, beta_at(pos), cfg.seed * 1_000_003 + step)
            if loss_hook is not None:
                loss = loss_hook(loss, epoch, step)
            finite = torch.tensor([float(torch.isfinite(loss.detach()).all())], device=device)
            if world > 1:
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if finite.item() < 1:
                raise NonFiniteLossError(
                    f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step} (eps {eps_t:.4g}); stopped. "
                    + _kept_message(ckpt_path, start_epoch if not history else history[-1]["epoch"])
                    + " Try a smaller --lr or a longer --eps-schedule ramp.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            with torch.no_grad():
                tot += torch.tensor([loss.item() * len(yb), (logits.argmax(1) == yb).sum().item(), len(yb)],
                                    dtype=torch.float64, device=device)
            bar.set_postfix(loss=f"{loss.item():.4f}", eps=f"{eps_t:.3g}")
            used_s += time.process_time() - c0
        if world > 1:
            dist.all_reduce(tot)
        if not _all_finite(model):
            raise NonFiniteLossError(f"non-finite parameters after epoch {epoch + 1}; stopped. "
                                     + _kept_message(ckpt_path, epoch))
        lr = opt.param_groups[0]["lr"]
        if budget_s is None:
            sched.step()
        last = position() if budget_s is not None else step - 1
        history.append({"epoch": epoch + 1, "loss": tot[0].item() / max(tot[2].item(), 1),
                        "train_acc": tot[1].item() / max(tot[2].item(), 1),
                        "eps": eps_at(last) if step and cfg.method != "nominal" else 0.0,
                        "kappa": (kappa_at(last) if step else 1.0) if cfg.loss in ("ibp_paper", "etb_attack") else None,
                        "beta": (beta_at(last) if step else 1.0) if cfg.method in BETA_METHODS else None,
                        "lr": lr, "steps": step, "images": int(tot[2].item()),
                        "time_s": time.perf_counter() - t0, "processes": world,
                        "budget_used_s": used_s if budget_s is not None else None})
        if rank == 0:
            state = {"format": "etbkernels-train-1", "config": cfg.to_dict(), "epoch": epoch + 1, "step": step,
                     "budget_used_s": used_s,
                     "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": _sched_to_plain(sched.state_dict()),
                     "rng": {"torch": torch.get_rng_state()}, "history": history}
            save_checkpoint(state, ckpt_path)
            write_json_atomic(out / "train_log.json", {"config": cfg.to_dict(), "history": history, "train_images": n,
                                                       "finished": budget_s is not None and used_s >= budget_s
                                                       or epoch + 1 == cfg.epochs})
            log(f"epoch {epoch + 1}: loss {history[-1]['loss']:.4f}, train acc {100 * history[-1]['train_acc']:.2f}%, "
                f"{history[-1]['time_s']:.1f} s -> {ckpt_path}")
        if world > 1:
            dist.barrier()
    if rank == 0:
        if stopped == "budget" or (budget_s is not None and used_s >= budget_s):
            log(f"CPU-time budget of {cfg.budget_cpu_minutes:g} minutes used after {step} steps "
                f"({len(history)} epochs, the last one partial when it stopped mid-epoch)")
        log(format_history(history))
    return history


def _kept_message(path: Path, epoch: int) -> str:
    if path.exists():
        return f"The last good checkpoint ({path}, after epoch {epoch}) is intact."
    return "No checkpoint had been written yet."


def _sched_to_plain(sd: Dict) -> Dict:
    """MultiStepLR keeps milestones in a Counter, which weights_only loading refuses: store a dict."""
    return {k: (dict(v) if k == "milestones" else v) for k, v in sd.items()}


def _sched_from_plain(sd: Dict) -> Dict:
    from collections import Counter
    return {k: (Counter(v) if k == "milestones" else v) for k, v in sd.items()}
