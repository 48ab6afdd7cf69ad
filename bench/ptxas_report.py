"""Register / spill / shared-memory report of the CUDA kernels (nvcc -Xptxas -v on the torch-free .cu).

Usage: python -m bench.ptxas_report [--arch sm_90]. Prints one line per kernel; exit 1 if nvcc fails.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def demangle(name: str) -> str:
    try:
        out = subprocess.run(["c++filt", name], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return name
    out = re.sub(r"etbk::cuda::\(anonymous namespace\)::", "", out)
    return re.sub(r"\(.*\)$", "", out) or name


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="sm_90")
    args = ap.parse_args()
    nvcc = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    src = os.path.join(ROOT, "csrc", "cuda", "etb_radius_kernels.cu")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, "-c", f"-arch={args.arch}", "-O3", "-std=c++17", "-I", os.path.join(ROOT, "csrc"),
               "-Xptxas", "-v", src, "-o", os.path.join(tmp, "k.o")]
        p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        print(p.stdout + p.stderr)
        return 1
    rows, cur = [], None
    for line in (p.stdout + p.stderr).splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            cur = {"name": demangle(m.group(1)), "regs": "?", "spill": "", "smem": "0"}
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur["spill"] = f"stack {m.group(1)} B, spill st/ld {m.group(2)}/{m.group(3)} B"
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["regs"] = m.group(1)
            s = re.search(r"(\d+) bytes smem", line)
            cur["smem"] = s.group(1) if s else "0"
    print(f"ptxas ({args.arch}): registers per thread, static smem (dynamic smem: 104448 B mma tf32, 101376 B mma bf16, 33792 B ffma f32, "
          f"33792 B ffma f64), spills")
    for r in rows:
        print(f"  {r['name']:<58s} regs {r['regs']:>3s}  smem {r['smem']:>4s} B  {r['spill']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
