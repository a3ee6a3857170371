"""Benchmarks: ``python -m benchmarks.throughput --backend sqlite`` (see README.md here)."""
