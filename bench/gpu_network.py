"""Whole-network bounds and training steps on a GPU (bench/gpu_check.sh runs it; ``--device cpu``
exercises the same code on a CPU).

For the small and medium CNN of the IBP paper (etbkernels.network.models; MNIST-shaped random
input, batch 256, float32, eps 0.1, random weights) this times on one device, in one run:

``bounds`` part (no gradients, every method once per round, interleaved):

- ``ibp``, ``etb_mask_ibp``, ``etb_mask_etb``, ``crown_ibp``: ``etbkernels.bounds()``
- ``per_logit``: the authors' algorithm written plainly (bench/per_logit.py: one autograd pass per logit)
- ``lirpa_ibp``, ``lirpa_crown_ibp``: auto_LiRPA 0.3 through bench/auto_lirpa_compat.py, when it
  imports (the table says why not otherwise)

and checks first, on the device, that ETB(mask="ibp") and the per-logit algorithm agree.

``train`` part (one optimizer step: bounds, loss, backward, Adam step; each method on its own copy
of the model, interleaved):

- ``nominal``: cross-entropy of the logits
- ``ibp``, ``crown_ibp``: ``BoundedModel(method=...).robust_loss(loss="ibp_paper")``
- ``etb_mask_ibp``, ``etb_mask_etb``: ``BoundedModel(method="etb", mask=...).robust_loss(loss="release")``

(what ``python -m etbkernels train`` does per batch). On CUDA the times are CUDA-event medians
after two warm-up calls, and the peak device memory of one call of each is given too. The TF32
settings in force (cuDNN convolutions allow TF32 by default) are recorded with the results.
Writes ``network_gpu_<device>.{json,md}`` (e.g. ``network_gpu_h100``; ``network_gpu_cpu`` with
``--device cpu``).

    python -m bench run network_gpu                         # python -m bench.gpu_network (GPU)
    python -m bench.gpu_network --device cpu --quick        # the code paths on a CPU, in seconds
    python -m bench.gpu_network --parts train --models small --batch 128
"""
from __future__ import annotations

import copy
import sys

import torch
from torch import nn

import etbkernels
from etbkernels.network import models
from etbkernels.nn import BoundedModel

from .harness import interleaved_medians, parse_bench_args, write_results
from .harness.network_args import network_parser, network_settings
from .per_logit import per_logit_autograd

EPS = 0.1
CLIP = (0.0, 1.0)
SLOW_S = 20  # a call slower than this (a CPU run at full size) is timed once
MAKE = {"small": models.small_cnn, "medium": models.medium_cnn}
BOUNDS_METHODS = ("ibp", "etb_mask_ibp", "etb_mask_etb", "crown_ibp", "per_logit", "lirpa_ibp", "lirpa_crown_ibp")
TRAIN_METHODS = ("nominal", "ibp", "etb_mask_ibp", "etb_mask_etb", "crown_ibp")


def device_name(device: str) -> str:
    """The GPU's name, or "cpu"."""
    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"


def result_tag(device: str) -> str:
    """The file-name tag: "h100" for an H100 (bench_cuda.device_tag), "cpu" on a CPU."""
    if not device.startswith("cuda"):
        return "cpu"
    from .bench_cuda import device_tag

    return device_tag(device_name(device))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_mib(fn, device: str):
    """Peak extra device memory (MiB) of one call of ``fn`` on CUDA; None on a CPU."""
    if not device.startswith("cuda"):
        return None
    _sync(device)
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    _sync(device)
    del out
    return round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)


def bound_fns(model: nn.Module, x: torch.Tensor):
    """{name: call} for the bounds part, and notes (agreement check, auto_LiRPA's availability)."""
    from .bench_network import lirpa_fns  # the same auto_LiRPA setup and check as the CPU benchmark

    notes = []
    with torch.no_grad():
        a = etbkernels.bounds(model, x[:8], EPS, mask="ibp")
    b = per_logit_autograd(model, x[:8], EPS)
    err = (a.radius - b.radius).abs().max().item() / max(b.radius.abs().max().item(), 1e-30)
    notes.append(f"max relative difference ETB(mask=ibp) vs per-logit autograd radius on {x.device.type}: {err:.2e}")
    fns = {
        "ibp": lambda: etbkernels.bounds(model, x, EPS, method="ibp"),
        "etb_mask_ibp": lambda: etbkernels.bounds(model, x, EPS, mask="ibp"),
        "etb_mask_etb": lambda: etbkernels.bounds(model, x, EPS, mask="etb"),
        "crown_ibp": lambda: etbkernels.bounds(model, x, EPS, method="crown-ibp"),
        "per_logit": lambda: per_logit_autograd(model, x, EPS),
    }
    try:  # an optional comparator: a failure on this device is reported, not raised
        lf, note = lirpa_fns(model, x)
    except Exception as e:  # noqa: BLE001
        lf, note = {}, f"auto_LiRPA imports but failed here: {type(e).__name__}: {str(e)[:200]}"
    fns.update(lf)
    notes.append(note)
    return fns, notes


def train_step_fn(model: nn.Module, method: str, x: torch.Tensor, y: torch.Tensor):
    """One training step of ``method`` on ``model`` (its own Adam): bounds, loss, backward, step."""
    if method == "nominal":
        objective = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
    else:
        bound, mask, loss = {"ibp": ("ibp", None, "ibp_paper"), "crown_ibp": ("crown-ibp", None, "ibp_paper"),
                             "etb_mask_ibp": ("etb", "ibp", "release"),
                             "etb_mask_etb": ("etb", "etb", "release")}[method]
        bm = BoundedModel(model, method=bound, mask=mask, clip=CLIP)
        objective = lambda: bm.robust_loss(x, y, EPS, loss=loss)[0]  # noqa: E731
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_value = objective()
        loss_value.backward()
        opt.step()
        return loss_value.detach()

    return step


def _ms(timings: dict) -> dict:
    return {k: round(1e3 * v["median_s"], 3) for k, v in timings.items()}


def main(argv=None) -> int:
    ap = network_parser(__doc__, "bench.gpu_network", repeats=5, quick_batch=4)
    ap.add_argument("--device", default="cuda", help="torch device (default cuda; cpu runs the same code here)")
    ap.add_argument("--parts", nargs="+", default=["bounds", "train"], choices=["bounds", "train"])
    args = parse_bench_args(ap, argv)
    models_, batch, repeats = network_settings(args)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_network: --device cuda needs a CUDA device (--device cpu runs the same code on a CPU)",
              file=sys.stderr)
        return 2
    warmup = 2 if device.startswith("cuda") else 1
    rows, notes = [], []
    for name in models_:
        torch.manual_seed(0)
        model = MAKE[name]().eval().to(device)
        x = torch.rand(batch, 1, 28, 28, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        row = {"model": name, "batch": batch}
        if "bounds" in args.parts:
            fns, model_notes = bound_fns(model, x)
            notes += [f"{name}: {n}" for n in model_notes]
            with torch.no_grad():  # per_logit enables autograd inside
                t = interleaved_medians(fns, repeats, warmup=warmup, device=device, single_if_slower_than=SLOW_S)
                row.update({f"bounds_{k}_ms": v for k, v in _ms(t).items()})
                if device.startswith("cuda"):
                    row.update({f"bounds_{k}_peak_MiB": peak_mib(f, device) for k, f in fns.items()})
            for k in ("etb_mask_ibp", "etb_mask_etb", "crown_ibp", "per_logit", "lirpa_ibp"):
                if f"bounds_{k}_ms" in row:
                    row[f"bounds_{k}_over_ibp"] = round(row[f"bounds_{k}_ms"] / row["bounds_ibp_ms"], 2)
            if "bounds_lirpa_crown_ibp_ms" in row:
                row["bounds_lirpa_crown_ibp_over_crown_ibp"] = round(
                    row["bounds_lirpa_crown_ibp_ms"] / row["bounds_crown_ibp_ms"], 2)
            row["bounds_per_logit_over_etb_mask_ibp"] = round(row["bounds_per_logit_ms"] / row["bounds_etb_mask_ibp_ms"], 2)
        if "train" in args.parts:
            steps = {m: train_step_fn(copy.deepcopy(model).train(), m, x, y) for m in TRAIN_METHODS}
            t = interleaved_medians(steps, repeats, warmup=warmup, device=device, single_if_slower_than=SLOW_S)
            row.update({f"train_{k}_ms": v for k, v in _ms(t).items()})
            if device.startswith("cuda"):
                row.update({f"train_{k}_peak_MiB": peak_mib(f, device) for k, f in steps.items()})
            for k in TRAIN_METHODS[1:]:
                row[f"train_{k}_over_nominal"] = round(row[f"train_{k}_ms"] / row["train_nominal_ms"], 2)
        print(row, flush=True)
        rows.append(row)
        del model, x, y
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    dev = device_name(device)
    meta = {"device": dev, "torch_device": device, "dtype": "float32", "eps": EPS, "repeats": repeats,
            "warmup": warmup, "parts": args.parts, "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cuda": torch.version.cuda, "has_cuda_kernels": etbkernels.has_cuda_kernels()}
    lines = [f"# Network bounds and training steps on {dev} (generated by bench/gpu_network.py)", "",
             f"float32, eps {EPS}, random weights, batch {batch}; medians of {repeats} interleaved rounds after "
             f"{warmup} warm-up call(s), in ms"
             + (f" (CUDA events); float32 matmul precision {meta['float32_matmul_precision']}, cuDNN TF32 "
                f"{meta['cudnn_allow_tf32']}." if device.startswith("cuda") else "."), ""]
    lines += [f"- {n}" for n in notes]
    for part, methods in (("bounds", BOUNDS_METHODS), ("train", TRAIN_METHODS)):
        if part not in args.parts:
            continue
        base = "ibp" if part == "bounds" else "nominal"
        title = "bounds() (no gradients)" if part == "bounds" else \
            "one training step (bounds, loss, backward, Adam step)"
        lines += ["", f"## {title}", "", f"| model | method | ms | / {base} | peak extra MiB |", "|---|---|---|---|---|"]
        for r in rows:
            for m in methods:
                if f"{part}_{m}_ms" not in r:
                    continue
                ratio = r[f"{part}_{m}_ms"] / r[f"{part}_{base}_ms"]
                peak = r.get(f"{part}_{m}_peak_MiB")
                lines.append(f"| {r['model']} | {m} | {r[f'{part}_{m}_ms']:.3f} | {ratio:.2f} | "
                             f"{'-' if peak is None else peak} |")
    write_results(args, f"network_gpu_{result_tag(device)}", {"meta": meta, "notes": notes, "rows": rows}, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
