"""Optuna: the replicated journal backend, studies, the search space, constraints, pruning,
and the storage proxy runners and clients use. Imports ``consensus`` and below.

Kept free of imports at package level: the client imports :mod:`.proxy` alone.
"""
