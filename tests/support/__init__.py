"""Helpers shared by the tests and the benchmarks (benchmarks import them as tests.support.*, run from the
repository root as modules: `python -m benchmarks.serve_bench`).

- service: a real uvicorn server in a thread, the tests' API keys, PNG bytes of an image
- artifacts: a tiny trained bundle and its gallery index (the service tests and benchmarks)
- bombs: decode bombs and other hostile images, built in memory
- bundles: small hand-made bundles for the bundle and index tests
- training_runs: tiny training configurations and IDX/folder datasets written on the fly
- ports: a free TCP port
- ddp_train: the script two torchrun processes run in the DDP test
"""
