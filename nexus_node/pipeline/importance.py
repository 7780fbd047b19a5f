"""Permutation feature importance on the original columns.

Shuffling one original column across the test rows and re-encoding it changes exactly
that column's block of encoded features (``"features": [start, stop]`` in the
preprocessing), because the encoding treats every column on its own. So this permutes
the block's rows directly: the same result as re-transforming a shuffled raw column,
without re-parsing text for every repeat (the tests check the equivalence).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from nexus_node.pipeline import metrics

REPEATS = 3


def permutation_importance(
    predict_fn: Callable[[np.ndarray], np.ndarray],
    X: np.ndarray,
    y: np.ndarray,
    prep: Mapping[str, Any],
    metric: str,
    seed: int,
    repeats: int = REPEATS,
) -> dict[str, float]:
    """How much the score drops when each original column is shuffled.

    Args:
        predict_fn: Encoded rows to predictions (values or class probabilities).
        X: Encoded test rows.
        y: Test targets (original units or class indices).
        prep: The fitted preprocessing (for each column's feature block).
        metric: Score to compare; a drop is measured in its direction (a rise in RMSE or
            log loss counts as a positive importance).
        seed: Seeds the shuffles.
        repeats: Shuffles per column, averaged.

    Returns:
        Column name to mean score drop (raw metric units), sorted descending.
    """
    preds = [predict_fn(Xp) for Xp in permuted_inputs(X, prep, seed, repeats)]
    return importance_of(preds, y, prep, metric, repeats)


def permuted_inputs(X: np.ndarray, prep: Mapping[str, Any], seed: int, repeats: int = REPEATS,
                    linked: Mapping[str, Sequence[int]] | None = None) -> Iterator[np.ndarray]:
    """The inputs permutation importance predicts, in order: ``X`` itself, then each
    column's ``repeats`` shuffles, column by column. A model's predictions on them are all
    :func:`importance_of` needs, so an ensemble's members, fitted on different nodes, each
    predict them, and the weighted average of their predictions (an ensemble's prediction)
    gives the ensemble's importance exactly.

    ``linked`` names, per original column, further columns of ``X`` (past its encoded
    features) shuffled with its block: the category codes a target encoding reads."""
    rng = np.random.default_rng(seed)
    yield X
    for spec in prep["columns"]:
        start, stop = spec["features"]
        cols = np.r_[start:stop, np.asarray((linked or {}).get(spec["name"], ()), dtype=np.int64)]
        for _ in range(repeats):
            Xp = X.copy()
            Xp[:, cols] = X[np.ix_(rng.permutation(X.shape[0]), cols)]
            yield Xp


def importance_of(preds: Sequence[np.ndarray], y: np.ndarray, prep: Mapping[str, Any], metric: str,
                  repeats: int = REPEATS) -> dict[str, float]:
    """:func:`permutation_importance` from the predictions on :func:`permuted_inputs`."""
    sign = 1.0 if metrics.MAXIMIZE[metric] else -1.0
    baseline = metrics.score(metric, y, preds[0])
    out: dict[str, float] = {}
    for i, spec in enumerate(prep["columns"]):
        drops = [sign * (baseline - metrics.score(metric, y, preds[1 + i * repeats + r])) for r in range(repeats)]
        out[spec["name"]] = float(np.mean(drops))
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))
