"""Peak memory of etbkernels.bounds on the medium CNN (batch 64) and large CNN (batch 16).

Each configuration runs in a fresh subprocess and reports its peak resident set size
(ru_maxrss), minus the RSS right before the call (model, input and torch already loaded).

    python bench/memory_network.py            # writes bench/results/memory_network.{json,md}
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = [("medium", 64, "etb", "etb"), ("medium", 64, "etb", "ibp"), ("medium", 64, "ibp", None),
           ("large", 16, "etb", "etb"), ("large", 16, "etb", "ibp"), ("large", 16, "ibp", None)]


def _child(model: str, batch: int, method: str, mask: str, grad: bool) -> dict:
    import torch

    import etbkernels
    from etbkernels.network import models

    torch.manual_seed(0)
    net = {"medium": models.medium_cnn, "large": models.large_cnn}[model]()
    x = torch.rand(batch, 1, 28, 28)
    kw = {} if method == "ibp" else {"mask": mask}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if grad:
        b = etbkernels.bounds(net, x, 0.1, method=method, **kw)
        (b.upper - b.lower).sum().backward()
    else:
        with torch.no_grad():
            b = etbkernels.bounds(net, x, 0.1, method=method, **kw)
    sec = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"model": model, "batch": batch, "method": method, "mask": mask, "grad": grad,
            "peak_rss_mib": round(peak / 1024, 1), "rss_before_mib": round(before / 1024, 1),
            "extra_mib": round((peak - before) / 1024, 1), "seconds": round(sec, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--grad", action="store_true", help="also measure forward + backward (training)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "memory_network"))
    args = ap.parse_args()
    if args.child:
        m, b, meth, mask, grad = args.child
        print(json.dumps(_child(m, int(b), meth, None if mask == "None" else mask, grad == "1")))
        return
    rows = []
    for grad in ([False, True] if args.grad else [False]):
        for m, b, meth, mask in CONFIGS:
            out = subprocess.run([sys.executable, __file__, "--child", m, str(b), meth, str(mask), str(int(grad))],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(row, flush=True)
            rows.append(row)
    with open(args.out + ".json", "w") as f:
        json.dump(rows, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write("| model | batch | method | mask | backward | peak RSS MiB | extra over start MiB | seconds |\n")
        f.write("|---|---|---|---|---|---|---|---|\n")
        for r in rows:
            f.write(f"| {r['model']} | {r['batch']} | {r['method']} | {r['mask'] or '-'} | {r['grad']} | "
                    f"{r['peak_rss_mib']} | {r['extra_mib']} | {r['seconds']} |\n")
    print(open(args.out + ".md").read())


if __name__ == "__main__":
    main()
