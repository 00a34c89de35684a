"""Losses on L2-normalised embeddings: triplet hardness and loss (spec 3), ICS (spec 5)."""

from training.losses.ics import ics_loss
from training.losses.triplet import hardness, triplet_loss

__all__ = ["hardness", "ics_loss", "triplet_loss"]
