"""Optuna: the replicated journal and the study tables it fills, the node's storage, studies, the search space, constraints, pruning,
and the storage proxy runners and clients use. Imports ``consensus`` and below.

Kept free of imports at package level: the client imports :mod:`.proxy` alone.
"""
