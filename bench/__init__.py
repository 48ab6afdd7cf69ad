"""The benchmark suite: ``python -m bench list`` shows the benchmarks, ``python -m bench run NAME``
runs one (docs/benchmarks.md: what each measures, its flops and floor, where its figures land).
Shared timing, metadata and result writing live in bench/harness/; the list in bench/registry.py."""
