"""Retrieval: datasets, benign metrics, the PGD engine and ranking attacks, ERS, ONNX embedding and FAISS galleries.

This is the bottom layer: it imports neither `training` nor `serve`.
"""
