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


def report(triton, GPUTarget, ASTSource, fn, sig, consts, attrs, warps, stages, arch, label) -> bool:
    """Compiles one variant, prints its line; True when it compiled to wgmma with pipelined copies."""
    try:
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                           target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages})
    except Exception as e:  # noqa: BLE001  (report every variant)
        print(f"{label}: COMPILE FAILED: {type(e).__name__}: {str(e)[:300]}")
        return False
    try:  # the ptxas Triton itself uses for this arch (Triton >= 3.5 ships two)
        from triton.backends.nvidia.compiler import get_ptxas
        ptxas = get_ptxas(arch).path
    except ImportError:
        ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    ptx = k.asm["ptx"]
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as fh:
        fh.write(ptx)
    log = subprocess.run([ptxas, f"-arch=sm_{arch}a" if arch == 90 else f"-arch=sm_{arch}", "-v", fh.name,
                          "-o", os.devnull], capture_output=True, text=True).stderr
    os.unlink(fh.name)
    regs = re.findall(r"Used (\d+) registers", log)
    spills = re.findall(r"(\d+) bytes spill stores", log)
    if not regs:
        print(log[-600:])
    wgmma, mma_sync = ptx.count("wgmma.mma_async"), ptx.count("mma.sync")
    cp_async = ptx.count("cp.async.cg") + ptx.count("cp.async.ca")
    ok = bool(regs) and (wgmma > 0 or arch < 90) and cp_async > 0
    print(f"{label}: regs {regs[0] if regs else '?'}, spill stores {spills[0] if spills else '?'} B, "
          f"shared {k.metadata.shared} B, wgmma {wgmma}, mma.sync {mma_sync}, cp.async {cp_async}"
          f"{'' if ok else '  <- NOT wgmma / not pipelined / no ptxas report'}")
    return ok


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
            failed += not report(triton, GPUTarget, ASTSource, tr._abs_product_kernel, sig, consts, attrs,
                                 warps, stages, args.arch, label)
    wnames = ["a_ptr", "t_ptr", "s_ptr", "part_ptr", "h", "tdim", "xdim", "C", "per_split"]
    for tdim, xdim, what in ((args.rows, args.cols, "dW1"), (args.cols, args.rows, "dW2^T")):
        bi, bx, bt_, warps, stages = tr.weight_grad_tile()
        sig = {n: "*fp32" for n in wnames[:4]}
        sig.update({n: "i32" for n in wnames[4:]})
        consts = {"BI": bi, "BX": bx, "BT": bt_}
        sig.update({k: "constexpr" for k in consts})
        attrs = {(i,): [["tt.divisibility", 16]] for i in range(7)}  # pointers, h, tdim, xdim 16-aligned
        label = f"tf32 weight grad ({what}) tile {bi},{bx},{bt_} warps {warps} stages {stages}"
        failed += not report(triton, GPUTarget, ASTSource, tr._masked_weight_grad_kernel, sig, consts, attrs,
                             warps, stages, args.arch, label)
    print(f"triton_compile_report: {6 - failed}/6 variants OK (sm_{args.arch}, triton {triton.__version__})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
