import numpy as np
import pytest
from sklearn import metrics as sk

from nexus_node.errors import InvalidInput
from nexus_node.pipeline import metrics


def _probs(rng, n, k):
    logits = rng.normal(size=(n, k))
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def test_regression_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.normal(size=200) * 10
    pred = y + rng.normal(size=200) * 3
    assert metrics.r2(y, pred) == pytest.approx(sk.r2_score(y, pred))
    assert metrics.rmse(y, pred) == pytest.approx(np.sqrt(sk.mean_squared_error(y, pred)))
    assert metrics.mae(y, pred) == pytest.approx(sk.mean_absolute_error(y, pred))
    assert metrics.r2(np.ones(5), np.zeros(5)) == 0.0   # constant truth: defined, not NaN


def test_binary_metrics_match_scikit_learn_including_tied_scores():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p1 = np.round(np.clip(y * 0.3 + rng.uniform(size=300) * 0.7, 0, 1), 1)   # many ties
    proba = np.stack([1 - p1, p1], axis=1)
    pred = proba.argmax(axis=1)
    assert metrics.roc_auc(y, proba) == pytest.approx(sk.roc_auc_score(y, p1))
    assert metrics.accuracy(y, proba) == pytest.approx(sk.accuracy_score(y, pred))
    assert metrics.f1(y, proba) == pytest.approx(sk.f1_score(y, pred))
    assert metrics.log_loss(y, proba) == pytest.approx(sk.log_loss(y, np.clip(proba, 1e-15, 1), labels=[0, 1]))


def test_multiclass_metrics_match_scikit_learn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 400)
    proba = _probs(rng, 400, 4)
    proba[np.arange(400), y] += 0.5
    proba /= proba.sum(axis=1, keepdims=True)
    pred = proba.argmax(axis=1)
    assert metrics.roc_auc(y, proba) == pytest.approx(sk.roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    assert metrics.f1(y, proba) == pytest.approx(sk.f1_score(y, pred, average="macro"))
    assert metrics.log_loss(y, proba) == pytest.approx(sk.log_loss(y, proba))


def test_auc_of_a_single_class_split_is_chance_not_nan():
    assert metrics.roc_auc(np.zeros(10, dtype=int), _probs(np.random.default_rng(3), 10, 2)) == 0.5


def test_metric_sets_directions_and_task_check():
    rng = np.random.default_rng(4)
    assert set(metrics.all_metrics("regression", np.arange(5.0), np.arange(5.0))) == {"r2", "rmse", "mae"}
    assert set(metrics.all_metrics("binary", np.array([0, 1]), _probs(rng, 2, 2))) == {"accuracy", "f1", "roc_auc", "log_loss"}
    assert [metrics.default_metric(t) for t in ("regression", "binary", "multiclass")] == ["r2", "roc_auc", "accuracy"]
    assert not metrics.MAXIMIZE["rmse"] and metrics.MAXIMIZE["f1"]
    with pytest.raises(InvalidInput, match="does not apply to regression"):
        metrics.check_metric("accuracy", "regression")
