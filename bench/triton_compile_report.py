"""Compiles the Triton tensor-core kernel (etbkernels/triton_radius.py) for a GPU arch without a GPU.

For TF32 and BF16, forward and backward (WRITE_T), at the default tiles of a benchmark shape, it
builds PTX and a cubin with Triton's own ptxas (as Triton's JIT would on the GPU, with the
16-divisibility hints the JIT gives aligned sizes), checks that the tensor-core instruction is
Hopper's wgmma (not the older mma.sync) and that copies are pipelined (cp.async), and prints
registers / spills / shared memory per variant. Exit 1 if a variant fails to compile or to use
wgmma on sm_90. CI runs it in the CUDA venv (scripts/ci_cuda_build.sh).

Usage: python bench/triton_compile_report.py [--arch 90] [--rows 1024 --cols 784]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
# The kernel module alone (it imports only torch and triton): no compiled etbkernels build needed.
KERNELS = os.path.join(os.path.dirname(HERE), "etbkernels", "triton_radius.py")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=784)
    args = ap.parse_args()
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError:
        print("triton_compile_report: Triton is not installed", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location("etbk_triton_radius", KERNELS)
    tr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tr)

    try:  # the ptxas Triton itself uses for this arch (Triton >= 3.5 ships two)
        from triton.backends.nvidia.compiler import get_ptxas
        ptxas = get_ptxas(args.arch).path
    except ImportError:
        ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    names = ["a_ptr", "bt_ptr", "s_ptr", "wcol_ptr", "out_ptr", "wrow_ptr", "t_ptr",
             "rows", "cols", "h"]
    failed = 0
    for bf16 in (False, True):
        for write_t in (False, True):
            rows, cols = (args.cols, args.rows) if write_t else (args.rows, args.cols)
            br, bc, bk, warps, stages = tr.default_tile(rows, cols, bf16)
            op = "*bf16" if bf16 else "*fp32"
            sig = {n: "*fp32" for n in names[:7]}
            sig.update(a_ptr=op, bt_ptr=op, rows="i32", cols="i32", h="i32")
            consts = {"BR": br, "BC": bc, "BK": bk, "WRITE_T": write_t, "TF32": not bf16}
            sig.update({k: "constexpr" for k in consts})
            # pointers, rows, cols and h 16-aligned, as the JIT specializes them for the benchmark shapes
            attrs = {(i,): [["tt.divisibility", 16]] for i in range(10)}
            label = f"{'bf16' if bf16 else 'tf32'} {'backward (T)' if write_t else 'forward'} tile {br},{bc},{bk} " \
                    f"warps {warps} stages {stages}"
            try:
                src = ASTSource(fn=tr._abs_product_kernel, signature=sig, constexprs=consts, attrs=attrs)
                k = triton.compile(src, target=GPUTarget("cuda", args.arch, 32),
                                   options={"num_warps": warps, "num_stages": stages})
            except Exception as e:  # noqa: BLE001  (report every variant)
                print(f"{label}: COMPILE FAILED: {type(e).__name__}: {str(e)[:300]}")
                failed += 1
                continue
            ptx = k.asm["ptx"]
            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as fh:
                fh.write(ptx)
            arch = f"sm_{args.arch}a" if args.arch == 90 else f"sm_{args.arch}"
            log = subprocess.run([ptxas, f"-arch={arch}", "-v", fh.name, "-o", os.devnull],
                                 capture_output=True, text=True).stderr
            os.unlink(fh.name)
            regs = re.findall(r"Used (\d+) registers", log)
            if not regs:
                print(log[-600:])
                failed += 1
            spills = re.findall(r"(\d+) bytes spill stores", log)
            wgmma, mma_sync = ptx.count("wgmma.mma_async"), ptx.count("mma.sync")
            cp_async = ptx.count("cp.async.cg") + ptx.count("cp.async.ca")
            ok = (wgmma > 0 or args.arch < 90) and cp_async > 0
            print(f"{label}: regs {regs[0] if regs else '?'}, spill stores {spills[0] if spills else '?'} B, "
                  f"shared {k.metadata.shared} B, wgmma {wgmma}, mma.sync {mma_sync}, cp.async {cp_async}"
                  f"{'' if ok else '  <- NOT wgmma / not pipelined'}")
            failed += not ok
    print(f"triton_compile_report: {4 - failed}/4 variants OK (sm_{args.arch}, triton {triton.__version__})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
