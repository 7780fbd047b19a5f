"""How a training run ended, for either family (kept apart from :mod:`.train` so the tree
family reports it without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class TrainResult:
    """How a training run ended.

    Attributes:
        value: Best validation score (None when no epoch was scored).
        epochs: Epochs (boosting iterations for trees) that produced ``value``: what a
            refit on train+val should run.
        state_dict: The MLP's weights at the best epoch (CPU tensors); None on failure and
            for trees.
        state: ``"COMPLETE"``, ``"PRUNED"`` or ``"FAIL"``.
        message: Why it ended, for people.
        epochs_run: Epochs actually run (includes the patience tail).
        predictions: At the best epoch, the predictions (values, or class probabilities)
            on every validation row, fold after fold (see :func:`scored_rows`): what
            ensemble selection compares trials on. None when no epoch was scored.
    """

    value: float | None
    epochs: int
    state_dict: dict[str, Any] | None
    state: str
    message: str
    epochs_run: int
    predictions: np.ndarray | None = None


def scored_rows(folds: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    """The true values of the rows a trial's ``predictions`` cover, in their order: every
    fold's validation rows, fold 0 (the validation split) first."""
    return np.concatenate([np.asarray(f["y_val"]) for f in folds])
