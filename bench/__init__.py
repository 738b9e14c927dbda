"""Benchmarks of the usage accountant: `python -m bench.run [--quick]` (see docs/benchmarks.md)."""
