"""Benchmark harness: ``python -m benchmarks.run [--quick]`` writes ``benchmarks/RESULTS.md``."""
