"""Embed images with a bundle's ONNX graph: the inference path of `index` and `serve` (no torch autograd needed)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from retrieval.models.bundle import Bundle
from retrieval.errors import UserError
from retrieval.threads import default_threads


class OnnxEmbedder:
    """One onnxruntime session per bundle; `embed` splits large inputs into batches to bound memory."""

    def __init__(self, bundle: Bundle, threads: int | None = None, batch_size: int = 256) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(
                str(bundle.onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for malformed graphs
            raise UserError(f"cannot load {bundle.onnx_path}: {exc}") from None
        self.input_shape = (bundle.channels, bundle.input_size, bundle.input_size)
        self.dim = bundle.embedding_dim
        self.batch_size = batch_size

    def embed(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """float images [N,C,H,W] in [0,1] -> L2-normalised embeddings float32 [N,D]."""
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or images.shape[1:] != self.input_shape:
            expected = ",".join(map(str, self.input_shape))
            raise UserError(f"expected images of shape [N,{expected}], got {list(images.shape)}")
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            out[start : start + len(batch)] = self.session.run(["embedding"], {"pixel_values": batch})[0]
        return out
