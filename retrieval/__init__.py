"""Retrieval, the core both wings stand on: models/ (architectures and the one model loader), datasets/, attacks/,
robustness/ (the PGD engine, the evaluation, ERS) and gallery/ (ONNX embedding, FAISS indexes), plus the Protocol
and the small shared modules beside them.

It imports neither `training` nor `serve` (pyproject.toml [tool.importlinter]).
"""
