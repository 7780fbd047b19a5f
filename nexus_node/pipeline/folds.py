"""Cross-validation folds over the train and validation rows of a small table.

A trial on a small table scores every configuration on k folds instead of the one
validation split: fold 0 is the validation split itself (its model trains on the train
split, exactly the single-split trial) and the train split is dealt into folds 1..k-1, so
every train+validation row is scored once and a configuration's score is the mean of k
models' validation scores.

Why: on a small table the validation split holds a few hundred rows, and the noise of a
score on so few rows is as large as the differences between the configurations the search
compares; a search of hundreds of trials then picks whichever configuration the validation
rows happen to favour. Measured on the insurance file's bench split (214 validation rows):
scikit-learn's default trees and a 4-leaf variant score 0.856 and 0.856 on validation but
0.821 and 0.849 on held-out rows; the 4-fold mean (856 rows scored) orders them 0.854 and
0.862. Large tables keep the single split: their validation split is already large, and
k-fold costs k times the training.

numpy only: trial runners import this.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

# Tables whose train+validation rows number at most this are cross-validated (about 6,250
# rows in all with the default 20% test share). Above it the validation split holds more
# than 1,250 rows and one split is precise enough for the cost.
CV_MAX_ROWS = 5000


def fold_count(n_train: int, n_val: int) -> int:
    """Folds for a table with these split sizes: 1 (the single split) above
    :data:`CV_MAX_ROWS`, else the validation split plus as many folds of its size as the
    train split holds (4 with the default 60/20 shares), at least 2."""
    if n_val < 1 or n_train + n_val > CV_MAX_ROWS:
        return 1
    return 1 + max(1, int(round(n_train / n_val)))


def assign_folds(n_train: int, n_val: int, seed: int, y_train: np.ndarray | None = None,
                 y_val: np.ndarray | None = None) -> np.ndarray | None:
    """The fold of every train+validation row, train rows first (the order in which
    :func:`fold_splits` and finalize stack them), or None for the single split.

    Validation rows are fold 0; train rows are dealt round-robin into folds 1..k-1 after a
    seeded shuffle, class by class when ``y_train`` (class indices) is given, so each fold
    keeps the class proportions. With classes, None as well when some fold's training rows
    would lack a class the train+validation rows have (a class too rare to split k ways).
    """
    k = fold_count(n_train, n_val)
    if k < 2:
        return None
    rng = np.random.default_rng(seed)
    train_folds = np.zeros(n_train, dtype=np.int64)
    groups = [np.arange(n_train)] if y_train is None else [
        np.flatnonzero(y_train == c) for c in np.unique(y_train)]
    dealt = 0
    for g in groups:
        g = rng.permutation(g)
        # Continue the deal where the previous class stopped, so fold sizes stay level.
        train_folds[g] = 1 + (dealt + np.arange(g.size)) % (k - 1)
        dealt += g.size
    folds = np.concatenate([train_folds, np.zeros(n_val, dtype=np.int64)])
    if y_train is not None:
        y = np.concatenate([np.asarray(y_train), np.asarray(y_val if y_val is not None else [])])
        classes = set(np.unique(y).tolist())
        if any(set(np.unique(y[folds != f]).tolist()) != classes for f in range(k)):
            return None
    return folds


def fold_splits(arrays: Mapping[str, np.ndarray], folds: np.ndarray | None) -> list[dict[str, Any]]:
    """``X_train, y_train, X_val, y_val`` of every fold (fold 0 first: the given split), and
    ``codes_train, codes_val`` when ``arrays`` has them (the category codes a target
    encoding reads); ``[arrays]`` itself for the single split (``folds`` None)."""
    if folds is None:
        return [dict(arrays)]
    stacked = {name: np.concatenate([arrays[f"{name}_train"], arrays[f"{name}_val"]])
               for name in ("X", "y", "codes") if f"{name}_train" in arrays}
    folds = np.asarray(folds)
    if folds.shape[0] != stacked["y"].shape[0]:
        raise ValueError(f"{folds.shape[0]} fold labels for {stacked['y'].shape[0]} train+validation rows")
    out = []
    for f in range(int(folds.max()) + 1):
        held = folds == f
        out.append({**{f"{name}_train": a[~held] for name, a in stacked.items()},
                    **{f"{name}_val": a[held] for name, a in stacked.items()}})
    return out
