"""Benchmarks and measurements (run with ``python -m benchmarks.<name>``)."""
