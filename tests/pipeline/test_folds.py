"""Cross-validation of small tables: the folds prepare writes, and both families scoring a
configuration as the mean over them."""

from __future__ import annotations

import numpy as np
import pytest

from nexus_node.pipeline import folds, gbt
from nexus_node.pipeline.train import DeviceData, fit_fixed, train_and_score
from tests.pipeline.helpers import arrays

GBT = {"family": "gbt", "learning_rate": 0.1, "max_iter": 60, "max_leaf_nodes": 15,
       "min_samples_leaf": 10, "l2_regularization": 0.1}
# No dropout: the only randomness is each network's seeded initialisation and batch order,
# so a network trained in step with others trains exactly as it does alone.
MLP = {"n_layers": 2, "width": 32, "activation": "relu", "dropout": 0.0, "learning_rate": 3e-3,
       "weight_decay": 1e-5, "batch_size": 64, "epochs": 8}


def test_fold_count_cross_validates_small_tables_only():
    assert folds.fold_count(600, 200) == 4   # the default 60/20 shares: validation + 3 of its size
    assert folds.fold_count(700, 100) == 8
    assert folds.fold_count(10, 200) == 2    # at least two folds
    assert folds.fold_count(3750, 1250) == 4 and 5000 == folds.CV_MAX_ROWS
    assert folds.fold_count(3751, 1250) == 1   # past the limit: the single split
    assert folds.fold_count(600, 0) == 1


def test_validation_rows_are_fold_zero_and_train_rows_are_dealt_evenly_by_class():
    y_train = np.array([0] * 60 + [1] * 30)
    y_val = np.array([0] * 20 + [1] * 10)
    f = folds.assign_folds(90, 30, seed=3, y_train=y_train, y_val=y_val)
    assert f.shape == (120,) and (f[90:] == 0).all() and set(f[:90].tolist()) == {1, 2, 3}
    for k in (1, 2, 3):
        assert (f[:90] == k).sum() == 30
        assert (y_train[f[:90] == k] == 1).sum() == 10   # each fold keeps a third positive
    again = folds.assign_folds(90, 30, seed=3, y_train=y_train, y_val=y_val)
    other = folds.assign_folds(90, 30, seed=4, y_train=y_train, y_val=y_val)
    assert (again == f).all() and not (other == f).all()
    assert (folds.assign_folds(4000, 1001, seed=0) is None)   # a large table: the single split


def test_a_class_too_rare_to_split_keeps_the_single_split():
    # One training row of class 2, none in validation: the fold holding it would train without it.
    y_train = np.array([0, 1] * 30 + [2])
    assert folds.assign_folds(61, 20, 0, y_train, np.array([0, 1] * 10)) is None
    assert folds.assign_folds(61, 20, 0, y_train, np.array([0, 1] * 9 + [2, 2])) is not None


def test_every_row_is_held_out_once_and_fold_zero_is_the_given_split(insurance):
    a = arrays(insurance)
    assert insurance["split"]["cv_folds"] == 4 and "folds" in insurance["files"]
    splits = folds.fold_splits(a, a["folds"])
    assert len(splits) == 4
    assert np.array_equal(splits[0]["X_train"], a["X_train"]) and np.array_equal(splits[0]["y_val"], a["y_val"])
    held = np.concatenate([s["y_val"] for s in splits])
    assert np.array_equal(np.sort(held), np.sort(np.concatenate([a["y_train"], a["y_val"]])))
    for s in splits:
        assert s["X_train"].shape[0] + s["X_val"].shape[0] == a["folds"].shape[0]
    assert folds.fold_splits(a, None)[0]["X_val"] is a["X_val"]
    with pytest.raises(ValueError, match="fold labels"):
        folds.fold_splits(a, a["folds"][:-1])


def test_stratified_folds_of_a_class_table(titanic):
    a = arrays(titanic)
    rate = np.concatenate([a["y_train"], a["y_val"]]).mean()
    for s in folds.fold_splits(a, a["folds"]):
        assert abs(s["y_val"].mean() - rate) < 0.02


def test_trees_report_the_mean_of_the_folds_boosted_in_step(insurance):
    a = arrays(insurance)
    cols, splits = a["tree_columns"], folds.fold_splits(a, a["folds"])
    alone = []
    for s in splits:
        seen: list[float] = []
        gbt.train_and_score_gbt(s, GBT, "regression", "r2", 0, columns=cols, report=lambda v, k: seen.append(v) or False)
        alone.append(seen)
    together: list[float] = []
    res = gbt.train_and_score_gbt(splits, GBT, "regression", "r2", 0, columns=cols,
                                  report=lambda v, k: together.append(v) or False)
    steps = len(together)
    assert steps >= 3 and all(len(s) >= steps for s in alone)
    np.testing.assert_allclose(together, np.mean([s[:steps] for s in alone], axis=0), rtol=1e-12)
    assert res.value == max(together) and res.epochs == (int(np.argmax(together)) + 1) * gbt.CHUNK
    # One fold alone is the single-split trial.
    single = gbt.train_and_score_gbt(a, GBT, "regression", "r2", 0, columns=cols)
    assert gbt.train_and_score_gbt(splits[:1], GBT, "regression", "r2", 0, columns=cols).value == single.value


def test_networks_report_the_mean_of_the_folds_and_keep_fold_zero(titanic):
    a = arrays(titanic)
    splits = folds.fold_splits(a, a["folds"])
    data = [DeviceData.from_arrays(s, "binary", 2) for s in splits]
    alone = []
    for d in data:
        seen: list[float] = []
        train_and_score(d, MLP, "binary", 2, "roc_auc", 0, report=lambda v, e: seen.append(v) or False)
        alone.append(seen)
    together: list[float] = []
    res = train_and_score(data, MLP, "binary", 2, "roc_auc", 0, report=lambda v, e: together.append(v) or False)
    steps = len(together)
    assert steps >= 2
    np.testing.assert_allclose(together, np.mean([s[:steps] for s in alone], axis=0), rtol=1e-9)
    assert res.value == max(together)
    # The weights kept are fold 0's (trained on the train split) at the best mean epoch.
    model, _ = fit_fixed(data[0], MLP, res.epochs, 0)
    for k, v in model.state_dict().items():
        assert np.allclose(v.numpy(), res.state_dict[k].numpy())
