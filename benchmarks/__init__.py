"""Benchmarks; run from the repository root as modules (`python -m benchmarks.serve_bench`), so they import
the helpers they share with the tests from tests.support."""
