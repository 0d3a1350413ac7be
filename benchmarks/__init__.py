"""Benchmark commands (`python -m benchmarks.op`, `.data`, `.temporal`); each writes its figures to RESULTS.md."""
