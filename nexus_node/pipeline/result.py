"""How a training run ended, for either family (kept apart from :mod:`.train` so the tree
family reports it without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
    """

    value: float | None
    epochs: int
    state_dict: dict[str, Any] | None
    state: str
    message: str
    epochs_run: int
