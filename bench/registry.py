"""The benchmarks ``python -m bench`` knows: name, module, one-line summary, the result files
it writes, and what it needs to run.

Every entry is a module with ``main(argv) -> int`` that takes ``--quick`` and ``--out``
(bench/harness/results.py). ``args`` picks a variant of a module (the same script, another
result file). docs/benchmarks.md describes each one; tests/test_bench_registry.py checks that
the two agree.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Tuple

from .harness import requirements


@dataclass(frozen=True)
class Benchmark:
    """One runnable benchmark."""

    name: str
    module: str
    summary: str
    writes: Tuple[str, ...]  # stems (fnmatch patterns) of its result files in the --out folder
    args: Tuple[str, ...] = ()  # fixed arguments: the variant of ``module`` this entry runs
    requires: Callable[[], str] = requirements.none  # "" or why it cannot run here
    needs_args: str = ""  # when set: why it cannot run without extra arguments (after --)

    def unavailable(self, extra: Sequence[str] = ()) -> str:
        """Why it cannot run here with these extra arguments, or ""."""
        if self.needs_args and not extra:
            return self.needs_args
        return self.requires()


BENCHMARKS = (
    Benchmark("block", "bench.bench_block",
              "ETB and IBP block ops vs the naive reference and a same-flops matmul: time, GFLOP/s, peak memory (CPU)",
              ("block_cpu",)),
    Benchmark("micro", "bench.micro",
              "pytest-benchmark: block ops per shape and direction, and bounds() per method on the model zoo",
              ("micro",)),
    Benchmark("network", "bench.bench_network",
              "network logit bounds: IBP, CROWN-IBP, CROWN forward, ETB (both masks) vs per-logit autograd, "
              "with and without backward", ("bench_network",)),
    Benchmark("network_frozen", "bench.bench_network",
              "network logit bounds with frozen parameters (requires_grad=False, as when verifying a model)",
              ("bench_network_frozen",), args=("--frozen",)),
    Benchmark("profile_network", "bench.profile_network",
              "where the time of ETB network bounds goes, per stage of the patches path and the pull-back",
              ("profile_network",)),
    Benchmark("roofline_network", "bench.roofline_network",
              "network bounds: flops each method executes against time and this machine's matmul rate (floors)",
              ("roofline_network",)),
    Benchmark("chunk_size_network", "bench.chunk_size_network",
              "ETB mask=etb time against samples per chunk (the source of the CPU chunk cap)", ("chunk_size_network",)),
    Benchmark("chunk_plan_network", "bench.chunk_size_network",
              "chunk sizes per zoo model from the two chunking rules (no timing)", ("chunk_plan_network",),
              args=("--plan-only",)),
    Benchmark("memory_network", "bench.memory_network",
              "peak memory of network bounds, forward and forward+backward, one fresh process per case",
              ("memory_network",), args=("--grad",)),
    Benchmark("micro_network_ops", "bench.micro_network_ops",
              "small implementation choices of the network code: radius reduction, patches tap, conv transpose",
              ("micro_network_ops",)),
    Benchmark("lazy_tail", "bench.lazy_tail",
              "ETB mask=etb with and without the lazy tail of trailing Linear layers", ("lazy_tail",)),
    Benchmark("crown_full", "bench.crown_full",
              "full CROWN (windowed and dense rows) against the other methods and auto_LiRPA: time, flops, width",
              ("crown_full",)),
    Benchmark("versus_commit", "bench.versus_commit",
              "bounds() of this checkout against another commit's (git archive), interleaved in two processes",
              ("versus_commit",),
              needs_args="compares with another commit: `python -m bench run versus_commit -- --commit REV`"),
    Benchmark("etb_mask_speedup", "bench.etb_mask_speedup",
              "mask=\"etb\" ETB training step and bounds against another commit, and against their flop floor",
              ("etb_mask_speedup",)),
    Benchmark("tightness", "bench.tightness_study",
              "per-layer widths of every method against PGD on MNIST models, and ETB's violation rate",
              ("tightness",), requires=requirements.mnist),
    Benchmark("cuda", "bench.bench_cuda",
              "fused CUDA block kernels (TF32, BF16, fp32) vs same-flops bmm, chunked cuBLAS and the naive reference",
              ("gpu_*",), requires=requirements.gpu),
    Benchmark("triton_sweep", "bench.triton_sweep",
              "tile sweep of the Triton tensor-core radius kernels (forward, T, weight gradients)",
              ("triton_sweep_*",), requires=requirements.gpu_triton),
    Benchmark("network_gpu", "bench.gpu_network",
              "on a GPU: bounds() (IBP, ETB both masks, CROWN-IBP), per-logit autograd, auto_LiRPA, and one "
              "training step per method on the small and medium CNN", ("network_gpu_*",), requires=requirements.gpu),
    Benchmark("masked_fwd_gpu", "bench.gpu_masked_fwd",
              "block forward against the active fraction: which CUDA kernels (mma.sync, FFMA) skip inactive units",
              ("masked_fwd_gpu_*",), requires=requirements.gpu),
    Benchmark("auto_lirpa_old_torch", "bench.auto_lirpa_old_torch",
              "auto_LiRPA 0.3's bounds under torch 1.13 against its bounds here, ours and PGD",
              ("auto_lirpa_old_torch",), requires=requirements.auto_lirpa,
              needs_args="needs another torch: run `python -m bench.auto_lirpa_old_torch --dump FILE` in a torch 1.13 "
                         "venv, then `python -m bench run auto_lirpa_old_torch -- --compare FILE`"),
)


def by_name(name: str) -> Benchmark:
    """The benchmark called ``name``; KeyError listing the names when there is none."""
    for b in BENCHMARKS:
        if b.name == name:
            return b
    raise KeyError(f"no benchmark {name!r}; known: {', '.join(b.name for b in BENCHMARKS)}")
