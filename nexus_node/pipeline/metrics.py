"""Evaluation metrics in numpy.

Written here rather than imported from scikit-learn so that the trial path (which scores
the validation split every epoch) stays numpy + torch only; the tests check every
function against scikit-learn.

Regression metrics take predictions in original target units; classification metrics
take class probabilities of shape ``(n, n_classes)``.
"""

from __future__ import annotations

import math

import numpy as np

from nexus_node.errors import InvalidInput

MAXIMIZE = {
    "r2": True, "rmse": False, "mae": False,
    "accuracy": True, "f1": True, "roc_auc": True, "log_loss": False,
}
REGRESSION_METRICS = ("r2", "rmse", "mae")
CLASSIFICATION_METRICS = ("accuracy", "f1", "roc_auc", "log_loss")
_EPS = 1e-15


def default_metric(task: str) -> str:
    """The metric a search optimizes when the user names none."""
    return {"regression": "r2", "binary": "roc_auc"}.get(task, "accuracy")


def check_metric(metric: str, task: str) -> None:
    """Raise InvalidInput when ``metric`` does not apply to ``task``."""
    allowed = REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS
    if metric not in allowed:
        raise InvalidInput(f"metric {metric!r} does not apply to {task}; choose one of {list(allowed)}")


def r2(y: np.ndarray, pred: np.ndarray) -> float:
    ss_tot = float(((y - y.mean()) ** 2).sum())
    ss_res = float(((y - pred) ** 2).sum())
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0


def rmse(y: np.ndarray, pred: np.ndarray) -> float:
    return math.sqrt(float(((y - pred) ** 2).mean()))


def mae(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.abs(y - pred).mean())


def accuracy(y: np.ndarray, proba: np.ndarray) -> float:
    return float((proba.argmax(axis=1) == y).mean())


def f1(y: np.ndarray, proba: np.ndarray) -> float:
    """Binary: F1 of class 1. Multiclass: macro F1 over the classes present in ``y`` or
    predicted (scikit-learn's ``average="macro"``)."""
    pred = proba.argmax(axis=1)
    if proba.shape[1] == 2:
        return _f1_of(y, pred, 1)
    labels = np.union1d(y, pred)
    return float(np.mean([_f1_of(y, pred, c) for c in labels]))


def roc_auc(y: np.ndarray, proba: np.ndarray) -> float:
    """Binary: AUC of class 1's probability. Multiclass: one-vs-rest, macro average over
    classes that occur in ``y`` (and not in every row). 0.5 when undefined: a split
    holding one class cannot rank anything."""
    if proba.shape[1] == 2:
        v = _binary_auc(y == 1, proba[:, 1])
        return 0.5 if math.isnan(v) else v
    values = [_binary_auc(y == c, proba[:, c]) for c in range(proba.shape[1])]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else 0.5


def log_loss(y: np.ndarray, proba: np.ndarray) -> float:
    p = np.clip(proba[np.arange(y.size), y], _EPS, 1.0)
    return float(-np.log(p).mean())


_FUNCS = {"r2": r2, "rmse": rmse, "mae": mae, "accuracy": accuracy, "f1": f1, "roc_auc": roc_auc, "log_loss": log_loss}


def score(metric: str, y: np.ndarray, pred: np.ndarray) -> float:
    """One metric. ``pred`` is values (regression) or probabilities (classification)."""
    return _FUNCS[metric](y, pred)


def all_metrics(task: str, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Every metric that applies to ``task``: the final model's test report."""
    names = REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS
    return {m: score(m, y, pred) for m in names}


def _f1_of(y: np.ndarray, pred: np.ndarray, c: int) -> float:
    tp = float(np.sum((pred == c) & (y == c)))
    fp = float(np.sum((pred == c) & (y != c)))
    fn = float(np.sum((pred != c) & (y == c)))
    return 2 * tp / (2 * tp + fp + fn) if tp > 0 else 0.0


def _binary_auc(positive: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney U over average ranks (ties count half), i.e. the ROC AUC."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    _, inverse, counts = np.unique(s[order], return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = np.empty(s.size)
    ranks[order] = average_rank[inverse]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
