"""The regression target's scale and the class weights as searched choices: what each
choice does to training, and that finalize serves with the choice it was given."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nexus_node.pipeline import csvio, gbt, target, train
from nexus_node.pipeline.artifact import load_artifact, read_artifact
from nexus_node.runner.context import LocalContext
from nexus_node.runner.tasks import run_task
from nexus_node.study.constraints import heuristic_constraints
from tests.conftest import dataset
from tests.pipeline.helpers import arrays

GBT = {"family": "gbt", "learning_rate": 0.1, "max_iter": 60, "max_leaf_nodes": 15,
       "min_samples_leaf": 10, "l2_regularization": 0.1}


def test_log_choice_overrides_the_skew_rule_and_never_logs_a_non_positive_target():
    y = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    assert target.fit_target_transform(y, log=True)["log"] and not target.fit_target_transform(y, log=False)["log"]
    assert not target.fit_target_transform(np.array([0.0, 1.0, 50.0]), log=True)["log"]
    t = target.fit_target_transform(y, log=True)
    np.testing.assert_allclose(target.inverse(target.forward(y, t), t), y)
    # No choice in the configuration: the preprocessing's transform, else the skew rule.
    pre = {"log": False, "mean": 0.0, "std": 1.0}
    assert target.for_params(y, {}, pre) == pre
    assert target.for_params(y, {"target_transform": "log"}, pre)["log"]
    with pytest.raises(ValueError):
        target.log_choice({"target_transform": "sqrt"})


def test_the_profile_decides_which_choices_are_searched(insurance, titanic):
    reg = heuristic_constraints(insurance["profile"], 8 << 30)
    assert insurance["profile"]["target_column"]["stats"]["skew"] > 1   # charges: right-skewed
    assert reg.target_transforms == ("none", "log") and reg.class_weights == ()
    cls = heuristic_constraints(titanic["profile"], 8 << 30)          # 549 died / 342 survived
    assert cls.class_weights == ("none", "balanced") and cls.target_transforms == ()
    even = {**titanic["profile"], "target_column": {"stats": {"class_counts": {"0": 50, "1": 60}}}}
    assert heuristic_constraints(even, 8 << 30).class_weights == ("none",)
    signed = {**insurance["profile"], "target_column": {"stats": {"min": -3.0, "skew": 4.0}}}
    assert heuristic_constraints(signed, 8 << 30).target_transforms == ("none",)


@pytest.mark.slow
def test_log_scale_trains_differently_and_finalize_serves_it_inverted(insurance, tmp_path):
    a, cols = arrays(insurance), np.load(insurance["files"]["tree_columns"])
    plain = gbt.train_and_score_gbt(a, {**GBT, "target_transform": "none"}, "regression", "r2", 0, columns=cols)
    logged = gbt.train_and_score_gbt(a, {**GBT, "target_transform": "log"}, "regression", "r2", 0, columns=cols)
    assert plain.value != logged.value and min(plain.value, logged.value) > 0.75
    assert not insurance["preprocessing"]["target"]["transform"]["log"]
    for family, params in (("gbt", {**GBT, "target_transform": "log"}),
                           ("mlp", {"family": "mlp", "target_transform": "log", "n_layers": 2, "width": 64,
                                    "activation": "relu", "dropout": 0.0, "learning_rate": 3e-3,
                                    "weight_decay": 1e-5, "batch_size": 64, "epochs": 30})):
        path = tmp_path / f"{family}.zip"
        res = run_task({"task": "finalize", "params": params, "files": insurance["files"],
                        "task_type": "regression", "n_classes": 0, "metric": "r2", "seed": 0, "threads": 1,
                        "epochs_hint": 40 if family == "gbt" else 30, "preprocessing": insurance["preprocessing"],
                        "artifact_path": str(path)}, LocalContext())
        assert res["test_metrics"]["r2"] > 0.75, family
        # The artifact records the scale the model was trained on, so serving inverts it.
        _, prep, _, _ = read_artifact(str(path))
        assert prep["target"]["transform"]["log"] is True
        df, _ = csvio.read_table(dataset("insurance.csv"))
        rows = df.iloc[:200]
        pred = np.array([p["value"] for p in load_artifact(str(path)).predict(rows)["predictions"]])
        y = rows["charges"].astype(float).to_numpy()
        assert pred.min() > 0 and 1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum() > 0.75, family


def test_balanced_class_weights_weigh_each_class_equally():
    y = np.array([0, 0, 0, 1])
    w = train.class_weights(y, 2, "balanced")
    np.testing.assert_allclose(w, [4 / 6, 2.0])
    assert w[0] * 3 == pytest.approx(w[1] * 1)          # each class's total weight is the same
    assert train.class_weights(y, 2, "none") is None
    assert train.class_weights(np.array([0, 0]), 3, "balanced")[1:].tolist() == [1.0, 1.0]
    data = train.DeviceData.from_arrays({"X_train": np.zeros((4, 2), np.float32), "y_train": y},
                                        "binary", 2, torch.device("cpu"))
    loss = train._loss_fn(data, {"class_weight": "balanced"})
    # The same wrong answer on a common row and on a rare row: in a batch's weighted mean
    # the rare row's error counts three times as much (weights 2 against 2/3).
    logits = torch.tensor([[0.0, 2.0], [2.0, 0.0]])
    row_loss = float(torch.nn.functional.cross_entropy(logits[:1], torch.tensor([0])))
    both = float(loss(logits, torch.tensor([0, 1])))
    assert both == pytest.approx(row_loss, rel=1e-5)      # equal errors: any weights give the mean
    mixed = float(loss(torch.tensor([[0.0, 2.0], [0.0, 2.0]]), torch.tensor([0, 1])))
    right = float(torch.nn.functional.cross_entropy(torch.tensor([[0.0, 2.0]]), torch.tensor([1])))
    assert mixed == pytest.approx((w[0] * row_loss + w[1] * right) / (w[0] + w[1]), rel=1e-5)
    assert mixed < float(train._loss_fn(data, {})(torch.tensor([[0.0, 2.0], [0.0, 2.0]]), torch.tensor([0, 1])))
    assert train._loss_fn(data, {}).__class__ is torch.nn.CrossEntropyLoss


def test_balanced_trees_raise_the_rare_class_probability(titanic):
    a, cols = arrays(titanic), np.load(titanic["files"]["tree_columns"])
    X, y = a["X_train"][:, cols], a["y_train"]
    plain = gbt.fit_gbt(X, y, GBT, "binary", 30, 0)
    balanced = gbt.fit_gbt(X, y, {**GBT, "class_weight": "balanced"}, "binary", 30, 0)
    rare = int(np.bincount(y).argmin())
    assert balanced.class_weight == "balanced" and plain.class_weight is None
    p_plain = plain.predict_proba(a["X_val"][:, cols])[:, rare].mean()
    p_bal = balanced.predict_proba(a["X_val"][:, cols])[:, rare].mean()
    assert p_bal > p_plain + 0.03
    with pytest.raises(ValueError):
        gbt.class_weight({"class_weight": "heavy"})
