"""The paper's two input-size protocols (docs/method.md#training-budgets-and-cost), decided in one place.

The paper trains and evaluates 28x28 greyscale models (MNIST, Fashion-MNIST) and 224x224 photo models (CUB, CARS,
SOP) under different rules: the training budget, the evaluation profile and how an image is decoded all change
together. Training, evaluation, export and serving ask `protocol_for(input_size)`, so a model of any side is
trained, evaluated, exported and served under the same one.
"""

from __future__ import annotations

from dataclasses import dataclass

SMALL_INPUT_MAX = 64
"""Largest side under the 28x28 protocol: thumbnail-scale inputs, where a 256->224-style crop would cut content
the model needs (docs/method.md#training-budgets-and-cost says why 64)."""


@dataclass(frozen=True)
class Protocol:
    name: str
    profile: str
    """The evaluation profile (retrieval/attacks/profiles.py) that measures ERS for this protocol."""
    train_eps: float
    train_alpha: float
    """Training PGD budget used where the configuration leaves eps or alpha unset."""
    crop: bool
    """Decoding: resize to 256/224 of the side, then centre crop (random crop + flip in training); else a direct
    resize and no augmentation."""
    max_pixels: int
    """Largest decoded image accepted by default: ample for the model's input, small enough to decode quickly."""

    def training_budget(self, eps: float | None, alpha: float | None) -> tuple[float, float]:
        """(eps, alpha): the configured values where given, this protocol's otherwise."""
        return (self.train_eps if eps is None else eps, self.train_alpha if alpha is None else alpha)


SMALL = Protocol("28x28", "rob28", train_eps=77 / 255, train_alpha=3 / 255, crop=False, max_pixels=2048 * 2048)
LARGE = Protocol("224x224", "rob224", train_eps=8 / 255, train_alpha=1 / 255, crop=True, max_pixels=4096 * 4096)


def protocol_for(input_size: int) -> Protocol:
    """The protocol of a model whose input is `input_size` x `input_size` pixels."""
    if input_size <= 0:
        raise ValueError(f"input size must be positive, not {input_size}")
    return SMALL if input_size <= SMALL_INPUT_MAX else LARGE
