"""The robustness evaluation: the one PGD engine, every ERS attack over a query sample, and the score.

pgd (the engine every adversary runs on, in training and evaluation), evaluation (all attacks over a query sample
-> the robustness report), ers (normalisation, score and bootstrap interval). The attacks live beside this package
in retrieval/attacks/.
"""
