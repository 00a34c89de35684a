"""The gallery infrastructure: embed images with a bundle's ONNX model, index them in FAISS and publish generations.

command (the `index` command), items (gallery images -> vectors + metadata), embedder (onnxruntime), index (FAISS
build / load / append / search), quality (recall against exact search, tuning), generations (immutable directories
behind CURRENT), thumbnails (previews stored in a generation).
"""
