"""Scaling of a regression target, so a model regresses a unit-variance quantity.

Numpy only: the trial path imports this without pandas. The fitted transform is a plain
dict (it lives in the preprocessing JSON and the model artifact).

Whether a positive target is modelled on a log scale is a searched parameter
(``params["target_transform"]``: ``"none"`` or ``"log"``, offered by the constraints for a
positive, right-skewed target), so validation decides; the best trial's choice is what the
final model uses and what its artifact records. Configurations without the parameter (jobs
from before it existed) keep the old rule: log when the target is positive and skewed past
:data:`LOG_SKEW`.

Predictions come back clipped to a band around the training target range
(:data:`BAND_MARGIN`), recorded in the transform as ``band``: a network can extrapolate far
past any value it was trained on (issue 21: on a public housing table, two very large houses
were predicted at about 4.7 times their price, above any price in the training data), and no
validation row need be far enough out to show it. Trees never leave the range;
the band bounds every family alike, in trials, in finalize and when serving.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

# Without a searched choice, a positive target this skewed (sample skewness) is modelled
# on a log scale.
LOG_SKEW = 2.0
TRANSFORMS = ("none", "log")
# How far past the training target range a prediction may go, as a share of the range: a
# little room for real extrapolation, none for a wild one.
BAND_MARGIN = 0.1


def fit_target_transform(y: np.ndarray, log: bool | None = None) -> dict[str, Any]:
    """Fit the scaling of a regression target on the training rows.

    Args:
        y: Target values in original units.
        log: Model ``log(y)`` (ignored, i.e. False, when some value is not positive);
            None applies the skewness rule (:data:`LOG_SKEW`).

    Returns:
        ``{"log": bool, "mean": float, "std": float, "band": [low, high]}``;
        ``mean``/``std`` are of the (possibly logged) values, ``band`` (original units) is
        what :func:`inverse` clips to (see :func:`band_of`).
    """
    y = np.asarray(y, dtype=np.float64)
    positive = bool(y.size and y.min() > 0)
    use_log = positive and (skewness(y) > LOG_SKEW if log is None else bool(log))
    z = np.log(y) if use_log else y
    std = float(z.std())
    return {"log": use_log, "mean": float(z.mean()), "std": std if std > 0 else 1.0, "band": band_of(y)}


def band_of(y: np.ndarray) -> list[float] | None:
    """``[low, high]``: the range of ``y`` widened by :data:`BAND_MARGIN` of its width on
    each side, never below zero for a target that never is (prices, counts); None (no
    clipping) for no values."""
    y = np.asarray(y, dtype=np.float64)
    if not y.size:
        return None
    lo, hi = float(y.min()), float(y.max())
    room = BAND_MARGIN * (hi - lo)
    return [max(lo - room, 0.0) if lo >= 0 else lo - room, hi + room]


def log_choice(params: Mapping[str, Any] | None) -> bool | None:
    """A configuration's ``target_transform`` as :func:`fit_target_transform`'s ``log``
    argument (None when the configuration does not choose)."""
    choice = (params or {}).get("target_transform")
    if choice is None:
        return None
    if choice not in TRANSFORMS:
        raise ValueError(f"target_transform {choice!r} is not one of {TRANSFORMS}")
    return bool(choice == "log")


def for_params(y: np.ndarray, params: Mapping[str, Any] | None,
               default: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The transform a configuration trains with: fitted on ``y`` with its
    ``target_transform`` choice; without one, ``default`` (the preprocessing's) when
    given, else the skewness rule."""
    log = log_choice(params)
    if log is None and default is not None:
        return dict(default)
    return fit_target_transform(y, log)


def forward(y: np.ndarray, t: Mapping[str, Any]) -> np.ndarray:
    """Original units to model units."""
    z = np.log(np.asarray(y, dtype=np.float64)) if t["log"] else np.asarray(y, dtype=np.float64)
    scaled: np.ndarray = (z - t["mean"]) / t["std"]
    return scaled


def inverse(z: np.ndarray, t: Mapping[str, Any]) -> np.ndarray:
    """Model units back to original units, clipped to the transform's ``band`` (transforms
    fitted before it existed have none and are not clipped)."""
    v = np.asarray(z, dtype=np.float64) * t["std"] + t["mean"]
    # exp of a wild prediction would overflow to inf; 700 is near float64's limit.
    out: np.ndarray = np.exp(np.minimum(v, 700.0)) if t["log"] else v
    band = t.get("band")
    return np.clip(out, band[0], band[1]) if band is not None else out


def skewness(y: np.ndarray) -> float:
    """Sample skewness (0 for a constant)."""
    y = np.asarray(y, dtype=np.float64)
    sd = y.std()
    return float(((y - y.mean()) ** 3).mean() / sd**3) if sd > 0 else 0.0
