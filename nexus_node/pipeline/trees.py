"""Predict with exported gradient-boosted trees using numpy alone.

A served tree model is the arrays :func:`nexus_node.pipeline.gbt.export_trees` wrote:
loading it runs no code from the artifact and needs no scikit-learn. All trees are walked
together, one level per step, so prediction costs (tree depth) numpy operations per
block of rows rather than (trees x depth) Python steps.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from nexus_node.pipeline import target as target_scale

# Rows per block: the (rows x trees) index matrix stays a few tens of megabytes.
BLOCK_ROWS = 4096


def tree_columns(feature_names: Sequence[str]) -> np.ndarray:
    """Indices of the encoded features trees use: all but the piecewise-linear bins
    (``name__binK``; a category value containing "__bin" is kept, hence the split at "=")."""
    return np.array([i for i, n in enumerate(feature_names) if "__bin" not in n.split("=", 1)[0]], dtype=np.int64)


def raw_scores(nodes: np.ndarray, roots: np.ndarray, baseline: np.ndarray, per_iteration: int,
               X: np.ndarray) -> np.ndarray:
    """Sum of leaf values plus baseline, shape ``(n, per_iteration)`` (the model's raw output).

    Args:
        nodes: Structured node array (``NODE_DTYPE``).
        roots: Root index of each tree, iteration-major.
        baseline: Baseline raw score per output.
        per_iteration: Trees per boosting iteration (outputs).
        X: Rows as float64 (the tree columns only).
    """
    X = np.asarray(X, dtype=np.float64)
    out = np.tile(np.asarray(baseline, dtype=np.float64), (X.shape[0], 1))
    if roots.size == 0:
        return out
    feature, threshold = nodes["feature"], nodes["threshold"]
    left, right = nodes["left"], nodes["right"]
    missing_left, leaf = nodes["missing_left"].astype(bool), nodes["leaf"].astype(bool)
    # Tree t adds to output t % per_iteration.
    owner = np.arange(roots.size) % per_iteration
    for start in range(0, X.shape[0], BLOCK_ROWS):
        block = X[start:start + BLOCK_ROWS]
        rows = np.arange(block.shape[0])[:, None]
        at = np.broadcast_to(roots, (block.shape[0], roots.size)).copy()
        while True:
            inner = ~leaf[at]
            if not inner.any():
                break
            x = block[rows, feature[at]]
            # scikit-learn's rule: NaN follows missing_go_to_left, else x <= threshold goes left.
            go_left = np.where(np.isnan(x), missing_left[at], x <= threshold[at])
            at = np.where(inner, np.where(go_left, left[at], right[at]), at)
        values = nodes["value"][at]
        for k in range(per_iteration):
            out[start:start + block.shape[0], k] += values[:, owner == k].sum(axis=1)
    return out


def predict_trees(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], X: np.ndarray, task: str,
                  transform: Mapping[str, Any] | None) -> np.ndarray:
    """Values in target units (regression) or class probabilities, as the MLP's ``predict``.

    Args:
        arrays: ``{"nodes", "roots"}`` from the artifact.
        meta: ``{"baseline", "trees_per_iteration", "columns"}`` from the artifact config.
        X: Encoded rows (every encoded feature; the tree columns are picked here).
        task: Task type.
        transform: Regression target scaling.
    """
    cols = np.asarray(meta["columns"], dtype=np.int64)
    raw = raw_scores(arrays["nodes"], arrays["roots"], np.asarray(meta["baseline"]),
                     int(meta["trees_per_iteration"]), np.asarray(X)[:, cols])
    if task == "regression":
        assert transform is not None, "a regression model predicts through its target transform"
        return target_scale.inverse(raw[:, 0], transform)
    if raw.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-raw[:, 0]))
        return np.stack([1.0 - p, p], axis=1)
    z = np.exp(raw - raw.max(axis=1, keepdims=True))
    probabilities: np.ndarray = z / z.sum(axis=1, keepdims=True)
    return probabilities
