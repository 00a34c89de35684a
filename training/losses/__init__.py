"""Losses on L2-normalised embeddings: triplet hardness and loss (docs/method.md#triplet-loss-and-hardness), ICS (docs/method.md#intra-class-structure-loss-ics)."""

from training.losses.ics import ics_loss
from training.losses.triplet import hardness, triplet_loss

__all__ = ["hardness", "ics_loss", "triplet_loss"]
