"""Compiles the Triton tensor-core kernel (etbkernels/triton_radius.py) for a GPU arch without a GPU.

For TF32 and BF16, forward and backward (WRITE_T, and TF32 with both T layouts), and the exact-fp32
forward (and the 3xTF32 one the sweep times), at the default tiles of a benchmark shape, it
builds PTX and a cubin with Triton's own ptxas (as Triton's JIT would on the GPU, with the
16-divisibility hints the JIT gives aligned sizes), checks that the tensor-core instruction is
Hopper's wgmma (not the older mma.sync) and that copies are pipelined (cp.async), and prints
registers / spills / shared memory per variant. Exit 1 if a variant fails to compile or to use
wgmma on sm_90 (the exact-fp32 variant: if it uses any tensor-core instruction). CI runs it in the CUDA venv (scripts/ci_cuda_build.sh).

Usage: python -m bench.triton_compile_report [--arch 90] [--rows 1024 --cols 784], or by its path (as
scripts/ci_cuda_build.sh runs it from outside the repository: it imports nothing of bench/ or etbkernels)
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


def report(triton, GPUTarget, ASTSource, fn, sig, consts, attrs, warps, stages, arch, label,
           tensor_cores: bool = True) -> bool:
    """Compiles one variant, prints its line; True when it compiled to wgmma with pipelined copies (or,
    for an exact-fp32 variant, to no tensor-core instruction at all)."""
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
    if tensor_cores:
        ok = bool(regs) and (wgmma > 0 or arch < 90) and cp_async > 0
    else:  # exact fp32: a tensor-core instruction here would mean TF32 products
        ok = bool(regs) and wgmma == 0 and mma_sync == 0 and ptx.count("fma.rn.f32") > 0
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

    names = ["a_ptr", "bt_ptr", "s_ptr", "wcol_ptr", "out_ptr", "wrow_ptr", "t_ptr", "tt_ptr",
             "rows", "cols", "h"]
    failed = total = 0
    # (operands, what, WRITE_T, WRITE_TT, PRECISION): the TF32 / BF16 forward and backward T kernels, the
    # T kernel that also stores T's second layout (ETBK_TRITON_T_LAYOUT=dual), the exact-fp32 forward
    # (ETBK_CUDA_FFMA=triton: FMA products, no tensor cores by design)
    variants = [("tf32", "forward", False, False, "tf32"), ("tf32", "backward (T)", True, False, "tf32"),
                ("tf32", "backward (T, both layouts)", True, True, "tf32"),
                ("bf16", "forward", False, False, "tf32"), ("bf16", "backward (T)", True, False, "tf32"),
                ("fp32", "forward (exact, FMA)", False, False, "ieee"),
                ("fp32", "forward (3xTF32, sweep only)", False, False, "tf32x3")]
    for kind, what, write_t, write_tt, precision in variants:
        rows, cols = (args.cols, args.rows) if write_t else (args.rows, args.cols)
        br, bc, bk, warps, stages = tr.default_tile(rows, cols, kind == "bf16")
        op = "*bf16" if kind == "bf16" else "*fp32"
        sig = {n: "*fp32" for n in names[:8]}
        sig.update(a_ptr=op, bt_ptr=op, rows="i32", cols="i32", h="i32")
        consts = {"BR": br, "BC": bc, "BK": bk, "WRITE_T": write_t, "WRITE_TT": write_tt, "PRECISION": precision}
        sig.update({k: "constexpr" for k in consts})
        # pointers, rows, cols and h 16-aligned, as the JIT specializes them for the benchmark shapes
        attrs = {(i,): [["tt.divisibility", 16]] for i in range(11)}
        label = f"{kind} {what} tile {br},{bc},{bk} warps {warps} stages {stages}"
        total += 1
        failed += not report(triton, GPUTarget, ASTSource, tr._abs_product_kernel, sig, consts, attrs,
                             warps, stages, args.arch, label, tensor_cores=precision != "ieee")
    wnames = ["a_ptr", "t_ptr", "s_ptr", "part_ptr", "h", "tdim", "xdim", "C", "per_split"]
    for tdim, xdim, what in ((args.rows, args.cols, "dW1"), (args.cols, args.rows, "dW2^T")):
        bi, bx, bt_, warps, stages = tr.weight_grad_tile()
        sig = {n: "*fp32" for n in wnames[:4]}
        sig.update({n: "i32" for n in wnames[4:]})
        consts = {"BI": bi, "BX": bx, "BT": bt_}
        sig.update({k: "constexpr" for k in consts})
        attrs = {(i,): [["tt.divisibility", 16]] for i in range(7)}  # pointers, h, tdim, xdim 16-aligned
        label = f"tf32 weight grad ({what}) tile {bi},{bx},{bt_} warps {warps} stages {stages}"
        total += 1
        failed += not report(triton, GPUTarget, ASTSource, tr._masked_weight_grad_kernel, sig, consts, attrs,
                             warps, stages, args.arch, label)
    print(f"triton_compile_report: {total - failed}/{total} variants OK (sm_{args.arch}, triton {triton.__version__})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
