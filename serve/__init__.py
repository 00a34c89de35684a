"""Serving: the FastAPI app (/search, /probe, health, metrics) and the root command line.

Top of the import graph: uses `training` and `retrieval`.
"""
