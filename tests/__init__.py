"""The test suite, mirroring the packages; tests.support holds what the tests and the benchmarks share."""
