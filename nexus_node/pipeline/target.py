"""Scaling of a regression target, so the network regresses a unit-variance quantity.

Numpy only: the trial path imports this without pandas. The fitted transform is a plain
dict (it lives in the preprocessing JSON and the model artifact).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

# A positive target this skewed (sample skewness) is modelled on a log scale: prices and
# costs span orders of magnitude, and squared error on the raw scale is then dominated by
# a few rows.
LOG_SKEW = 2.0


def fit_target_transform(y: np.ndarray) -> dict[str, Any]:
    """Fit the scaling of a regression target on the training rows.

    Args:
        y: Target values in original units.

    Returns:
        ``{"log": bool, "mean": float, "std": float}``; ``mean``/``std`` are of the
        (possibly logged) values.
    """
    y = np.asarray(y, dtype=np.float64)
    use_log = bool(y.min() > 0 and skewness(y) > LOG_SKEW)
    z = np.log(y) if use_log else y
    std = float(z.std())
    return {"log": use_log, "mean": float(z.mean()), "std": std if std > 0 else 1.0}


def forward(y: np.ndarray, t: Mapping[str, Any]) -> np.ndarray:
    """Original units to model units."""
    z = np.log(np.asarray(y, dtype=np.float64)) if t["log"] else np.asarray(y, dtype=np.float64)
    return (z - t["mean"]) / t["std"]


def inverse(z: np.ndarray, t: Mapping[str, Any]) -> np.ndarray:
    """Model units back to original units."""
    v = np.asarray(z, dtype=np.float64) * t["std"] + t["mean"]
    # exp of a wild prediction would overflow to inf; 700 is near float64's limit.
    return np.exp(np.minimum(v, 700.0)) if t["log"] else v


def skewness(y: np.ndarray) -> float:
    """Sample skewness (0 for a constant)."""
    sd = y.std()
    return float(((y - y.mean()) ** 3).mean() / sd**3) if sd > 0 else 0.0
