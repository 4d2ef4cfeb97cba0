"""Benchmarks for trt-health-sidecar: ``python -m bench.run --out BENCHMARKS.md [--quick]``.

See docs/benchmarks.md for the method and how to read the numbers.
"""
