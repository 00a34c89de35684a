"""Training: SPC-2 batches, embedding models, triplet miners and losses, adversarial defenses, the trainer and export.

Uses `retrieval` (datasets, metrics, the PGD engine); never `serve`.
"""
