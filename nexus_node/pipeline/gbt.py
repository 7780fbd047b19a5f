"""The gradient-boosted trees family: scikit-learn's HistGradientBoosting, trained in
chunks of boosting iterations so the study's pruner can stop a poor trial early.

numpy + scikit-learn (no torch, no pandas). Trees see the prepared arrays without the
piecewise-linear bins (:func:`.trees.tree_columns`): a tree splits on a number's thresholds
itself, so the bins would only multiply its histogram work.

The fitted ensemble leaves the runner as plain arrays (:func:`export_trees`) that
:mod:`.trees` walks with numpy; nothing is pickled.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from nexus_node.pipeline import metrics
from nexus_node.pipeline import target as target_scale
from nexus_node.pipeline.result import TrainResult
from nexus_node.pipeline.row_stream import RowSource

# Boosting iterations per reported step: one pruning decision per chunk. Ten keeps the
# refit between reports cheap (warm start adds trees, it does not start over) while a
# 500-iteration trial still reports 50 times, as often as an MLP reports epochs.
CHUNK = 10
# Chunks without a better validation score before a trial stops (early stopping).
PATIENCE = 5
# Validation rows left on disk (a RowSource) are scored this many bytes of inputs at a time
# (scikit-learn copies each chunk to float64 as it predicts).
EVAL_BYTES = 8 << 20


def load_library() -> None:
    """Import scikit-learn's boosting (a task that sizes its rows by the memory left does
    so after the import, which takes about 90 MB)."""
    import sklearn.ensemble  # noqa: F401


def _estimator(task: str, params: Mapping[str, Any], max_iter: int, seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    kw = dict(
        learning_rate=float(params["learning_rate"]), max_iter=max_iter,
        max_leaf_nodes=int(params["max_leaf_nodes"]), min_samples_leaf=int(params["min_samples_leaf"]),
        l2_regularization=float(params["l2_regularization"]),
        # Our own validation split decides when to stop (as for the MLP), so the
        # estimator must not carve another one out of the training rows.
        early_stopping=False, warm_start=True, random_state=seed,
    )
    if task == "regression":
        return HistGradientBoostingRegressor(**kw)
    return HistGradientBoostingClassifier(**kw, class_weight=class_weight(params))


def class_weight(params: Mapping[str, Any]) -> str | None:
    """A configuration's ``class_weight`` (``"none"``, the default, or ``"balanced"``: each
    class's rows weighted by n / (classes x its count), so a rare class weighs as much in
    the loss as a common one) as scikit-learn takes it."""
    choice = params.get("class_weight", "none")
    if choice not in ("none", "balanced"):
        raise ValueError(f"class_weight {choice!r} is not 'none' or 'balanced'")
    return None if choice == "none" else "balanced"


def _threads(threads: int) -> AbstractContextManager[object]:
    from threadpoolctl import threadpool_limits

    limits: AbstractContextManager[object] = threadpool_limits(limits=threads if threads > 0 else None,
                                                               user_api="openmp")
    return limits


def predict_model(model: Any, X: np.ndarray, task: str, transform: Mapping[str, Any] | None) -> np.ndarray:
    """Values in target units (regression) or class probabilities (float64)."""
    if task == "regression":
        assert transform is not None, "a regression model predicts through its target transform"
        return target_scale.inverse(model.predict(X), transform)
    return np.asarray(model.predict_proba(X), dtype=np.float64)


def train_and_score_gbt(
    arrays: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]], params: Mapping[str, Any], task: str,
    metric: str, seed: int, threads: int = 1, columns: np.ndarray | None = None,
    report: Callable[[float, int], bool] | None = None,
    cancelled: Callable[[], bool] | None = None,
    pruned: Callable[[], bool] | None = None,
) -> TrainResult:
    """Boost in chunks of :data:`CHUNK` iterations with early stopping on validation.

    Step ``k`` (0-based, as Optuna's pruners expect) is the validation score after
    ``(k + 1) * CHUNK`` iterations; with several folds, the mean of the folds' scores, every
    fold boosted in step with the others. The result's ``epochs`` is the iteration count
    that produced the best score: what a refit on train+val should run.

    Args:
        arrays: ``X_train, y_train, X_val, y_val`` (regression targets in original units),
            or a list of them: the folds of :func:`.folds.fold_splits`. ``X_val`` may be a
            :class:`~.row_stream.RowSource` (rows too many to hold), scored a chunk at a time.
        params: ``learning_rate, max_iter, max_leaf_nodes, min_samples_leaf, l2_regularization``;
            optionally ``class_weight`` and ``target_transform``.
        task: ``"regression"``, ``"binary"`` or ``"multiclass"``.
        metric: Validation metric (its own direction decides "better").
        seed: Seeds the estimator.
        threads: OpenMP threads (0 leaves the default).
        columns: Feature indices to use (:func:`.trees.tree_columns`); all when None.
        report: Called after every chunk; True prunes.
        cancelled: Polled between chunks (and folds); True ends the run as pruned.
        pruned: Polled between chunks (and folds): a pruning answer that arrived after ``report``.

    Returns:
        A :class:`~nexus_node.pipeline.result.TrainResult` (``state_dict`` is always None:
        the finalize task refits).
    """
    metrics.check_metric(metric, task)
    cols = slice(None) if columns is None else np.asarray(columns)
    splits = [arrays] if isinstance(arrays, Mapping) else list(arrays)
    folds = []
    for a in splits:
        y_tr = np.asarray(a["y_train"])
        transform = None
        if task == "regression":
            transform = target_scale.for_params(y_tr, params)
            y_tr = target_scale.forward(y_tr, transform)
        X_va = a["X_val"] if isinstance(a["X_val"], RowSource) else np.asarray(a["X_val"])[:, cols]
        folds.append((np.asarray(a["X_train"])[:, cols], y_tr, X_va,
                      np.asarray(a["y_val"]), transform, _estimator(task, params, CHUNK, seed)))
    maximize = metrics.MAXIMIZE[metric]
    max_iter = max(CHUNK, int(params["max_iter"]))
    best: float | None = None
    best_iter, since_best, steps = 0, 0, math.ceil(max_iter / CHUNK)
    best_preds: np.ndarray | None = None

    def stopped() -> bool:
        return (cancelled is not None and cancelled()) or (pruned is not None and pruned())

    with _threads(threads):
        for step in range(steps):
            n_iter = min((step + 1) * CHUNK, max_iter)
            scores, preds = [], []
            for X_tr, y_tr, X_va, y_va, transform, model in folds:
                if stopped():
                    why = "stopped: cancelled" if cancelled is not None and cancelled() else f"pruned at step {step - 1}"
                    return TrainResult(best, best_iter, None, "PRUNED", why, step * CHUNK, best_preds)
                model.set_params(max_iter=n_iter)
                model.fit(X_tr, y_tr)
                preds.append(_predict_val(model, X_va, cols, task, transform))
                scores.append(metrics.score(metric, y_va, preds[-1]))
            value = float(np.mean(scores))
            if not math.isfinite(value):
                return TrainResult(None, n_iter, None, "FAIL", f"validation {metric} is {value} after "
                                   f"{n_iter} iterations; a lower learning rate may help", n_iter)
            if best is None or (value > best if maximize else value < best):
                best, best_iter, since_best = value, n_iter, 0
                best_preds = np.concatenate(preds)
            else:
                since_best += 1
            if report is not None and report(value, step):
                return TrainResult(best, best_iter, None, "PRUNED", f"pruned at step {step}", n_iter, best_preds)
            if since_best >= PATIENCE:
                return TrainResult(best, best_iter, None, "COMPLETE",
                                   f"early stop: no better {metric} for {PATIENCE * CHUNK} iterations", n_iter,
                                   best_preds)
    return TrainResult(best, best_iter, None, "COMPLETE", f"ran all {max_iter} iterations", max_iter, best_preds)


def _predict_val(model: Any, X: np.ndarray | RowSource, cols: Any, task: str,
                 transform: Mapping[str, Any] | None) -> np.ndarray:
    """:func:`predict_model` of validation rows: in memory (already restricted to the tree
    columns), or read from disk a chunk at a time."""
    if not isinstance(X, RowSource):
        return predict_model(model, X, task, transform)
    n_cols = X.n_features if isinstance(cols, slice) else len(cols)
    rows = max(256, EVAL_BYTES // (X.row_bytes + 12 * n_cols))
    return np.concatenate([predict_model(model, chunk[:, cols], task, transform) for chunk in X.chunks(rows)])


def fit_gbt(X: np.ndarray, y: np.ndarray, params: Mapping[str, Any], task: str, n_iter: int, seed: int,
            threads: int = 1, transform: Mapping[str, Any] | None = None) -> Any:
    """Fit exactly ``n_iter`` iterations (the final refit on train+val).

    Args:
        X: Encoded rows (already restricted to the tree columns).
        y: Targets in original units (regression) or class indices.
        params: The configuration.
        task: Task type.
        n_iter: Boosting iterations.
        seed: Seeds the estimator.
        threads: OpenMP threads.
        transform: Regression target scaling (:func:`.target.for_params` of the
            configuration; the artifact records it).
    """
    if task == "regression":
        assert transform is not None, "a regression model trains on its scaled target"
        y_fit = target_scale.forward(y, transform)
    else:
        y_fit = y
    model = _estimator(task, params, max(1, int(n_iter)), seed)
    with _threads(threads):
        model.fit(X, y_fit)
    return model


# Fields of a node the numpy walker needs; a dtype of our own, so an artifact does not
# depend on scikit-learn's private record layout.
NODE_DTYPE = np.dtype([("value", "<f8"), ("feature", "<i8"), ("threshold", "<f8"), ("left", "<i8"),
                       ("right", "<i8"), ("missing_left", "u1"), ("leaf", "u1")])


def export_trees(model: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A fitted HistGradientBoosting model as plain arrays and JSON.

    Returns:
        ``({"nodes": structured array of every tree's nodes, "roots": int64 index of each
        tree's root}, {"baseline": [...], "trees_per_iteration": K})``. Trees come in
        iteration order, ``K`` per iteration (one per class for multiclass), with child
        indices made global.

    Raises:
        ValueError: The model uses categorical splits (Nexus never asks for them).
    """
    parts, roots, offset = [], [], 0
    for iteration in model._predictors:
        for predictor in iteration:
            src = predictor.nodes
            if src["is_categorical"].any():
                raise ValueError("categorical splits cannot be exported")
            out = np.zeros(src.shape[0], dtype=NODE_DTYPE)
            out["value"], out["feature"], out["threshold"] = src["value"], src["feature_idx"], src["num_threshold"]
            out["left"], out["right"] = src["left"].astype(np.int64) + offset, src["right"].astype(np.int64) + offset
            out["missing_left"], out["leaf"] = src["missing_go_to_left"], src["is_leaf"]
            parts.append(out)
            roots.append(offset)
            offset += src.shape[0]
    nodes = np.concatenate(parts) if parts else np.zeros(0, dtype=NODE_DTYPE)
    baseline = np.asarray(model._baseline_prediction, dtype=np.float64).ravel()
    meta = {"baseline": [float(b) for b in baseline], "trees_per_iteration": int(model.n_trees_per_iteration_)}
    return {"nodes": nodes, "roots": np.asarray(roots, dtype=np.int64)}, meta
