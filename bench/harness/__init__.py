"""The benchmarks' shared harness: timing (timing.py), peak memory (memory.py), flop counts and
floors (flops.py), machine metadata (machine.py), arguments and the result writer (results.py),
requirements (requirements.py) and the pytest-benchmark converter (pytest_benchmark.py)."""
from .flops import block_flops, count_flops, matmul_rate
from .memory import peak_in_child, report_peak
from .results import bench_parser, parse_bench_args, write_results
from .timing import cuda_ms, interleaved_medians, median_seconds, median_split

__all__ = ["block_flops", "count_flops", "matmul_rate", "peak_in_child", "report_peak", "bench_parser",
           "parse_bench_args", "write_results", "cuda_ms", "interleaved_medians", "median_seconds", "median_split"]
