"""finalize's two fits: the best configuration retrained on train+val and scored on the
held-out test split (the reported metrics), then refitted on every row for the artifact."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from nexus_node.pipeline import gbt, metrics, train
from nexus_node.pipeline.artifact import load_artifact
from nexus_node.pipeline.train import DeviceData, fit_fixed, predict
from nexus_node.runner.context import LocalContext
from nexus_node.runner.tasks import run_task
from tests.pipeline.helpers import arrays

GBT = {"family": "gbt", "learning_rate": 0.1, "max_iter": 60, "max_leaf_nodes": 15,
       "min_samples_leaf": 10, "l2_regularization": 0.1}
MLP = {"family": "mlp", "n_layers": 1, "width": 16, "activation": "relu", "dropout": 0.0,
       "learning_rate": 3e-3, "weight_decay": 1e-5, "batch_size": 128, "epochs": 50}


def _finalize(prepared, path, params, epochs_hint):
    return run_task({"task": "finalize", "params": params, "files": prepared["files"],
                     "task_type": "regression", "n_classes": 0, "metric": "r2", "seed": 0, "threads": 1,
                     "epochs_hint": epochs_hint, "preprocessing": prepared["preprocessing"],
                     "artifact_path": str(path)}, LocalContext())


def _rows(a):
    n_tv = len(a["y_train"]) + len(a["y_val"])
    return n_tv, n_tv + len(a["y_test"])


def _metrics_json(path):
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("metrics.json"))


def test_tree_artifact_is_refitted_on_every_row_and_metrics_come_from_the_held_out_fit(insurance, tmp_path):
    path = tmp_path / "gbt.zip"
    res = _finalize(insurance, path, GBT, epochs_hint=30)
    a = arrays(insurance)
    n_tv, n_all = _rows(a)
    cols = np.load(insurance["files"]["tree_columns"])
    t = load_artifact(str(path)).preprocessing["target"]["transform"]
    tv = gbt.fit_gbt(np.concatenate([a["X_train"], a["X_val"]])[:, cols],
                     np.concatenate([a["y_train"], a["y_val"]]), GBT, "regression", 30, 0, 1, t)
    every = gbt.fit_gbt(np.concatenate([a["X_train"], a["X_val"], a["X_test"]])[:, cols],
                        np.concatenate([a["y_train"], a["y_val"], a["y_test"]]), GBT, "regression", 30, 0, 1, t)
    X_test = a["X_test"].astype(np.float32)
    # The reported test metrics are the train+val model's on rows it never saw ...
    held_out = metrics.all_metrics("regression", a["y_test"], gbt.predict_model(tv, X_test[:, cols], "regression", t))
    # (To float32 rounding: a member's evaluated predictions are kept as float32.)
    assert res["test_metrics"] == pytest.approx(held_out, rel=1e-6)
    # ... while the artifact (loaded without pickle) serves the model fitted on every row.
    served = load_artifact(str(path)).predict_encoded(X_test)
    np.testing.assert_allclose(served, gbt.predict_model(every, X_test[:, cols], "regression", t), rtol=1e-9)
    assert not np.allclose(served, gbt.predict_model(tv, X_test[:, cols], "regression", t), rtol=1e-3)
    assert res["epochs_trained"] == 30
    rows = {"evaluated_on": "test", "test_rows": len(a["y_test"]), "evaluated_model_rows": n_tv,
            "evaluated_model_splits": ["train", "val"], "final_model_rows": n_all,
            "final_model_splits": ["train", "val", "test"]}
    assert {k: res[k] for k in rows} == rows and res["note"] == ""
    saved = _metrics_json(path)
    assert {k: saved[k] for k in rows} == rows
    assert saved["test_metrics"] == res["test_metrics"] and saved["feature_importance"] == res["feature_importance"]


@pytest.mark.slow
def test_mlp_artifact_is_refitted_on_every_row_for_the_hinted_epochs(insurance, tmp_path):
    path = tmp_path / "mlp.zip"
    res = _finalize(insurance, path, MLP, epochs_hint=4)
    a = arrays(insurance)
    n_tv, n_all = _rows(a)
    predictor = load_artifact(str(path))
    t = predictor.preprocessing["target"]["transform"]

    def fit(splits):
        data = DeviceData.from_arrays({"X_train": np.concatenate([a[f"X_{s}"] for s in splits]),
                                       "y_train": np.concatenate([a[f"y_{s}"] for s in splits])},
                                      "regression", 0, torch.device("cpu"), transform=t)
        model, why = fit_fixed(data, MLP, 4, 0, 1)
        assert why == ""
        return model

    every, tv = fit(("train", "val", "test")), fit(("train", "val"))
    state = {k: v.cpu() for k, v in predictor._model.state_dict().items()}
    assert all(torch.equal(state[k], v.cpu()) for k, v in every.state_dict().items())
    assert not all(torch.equal(state[k], v.cpu()) for k, v in tv.state_dict().items())
    X_test = torch.as_tensor(a["X_test"], dtype=torch.float32)
    held_out = metrics.all_metrics("regression", a["y_test"], predict(tv, X_test, "regression", t))
    assert res["test_metrics"] == pytest.approx(held_out, rel=1e-6)
    assert res["epochs_trained"] == 4
    assert (res["evaluated_model_rows"], res["final_model_rows"]) == (n_tv, n_all)
    assert _metrics_json(path)["final_model_rows"] == n_all


def test_a_diverging_refit_on_every_row_keeps_the_evaluated_model_and_says_so(insurance, tmp_path, monkeypatch):
    a = arrays(insurance)
    n_tv, n_all = _rows(a)
    real = train.fit_fixed   # the runner imports it when a network is refitted

    def diverge_on_every_row(data, *args, **kwargs):
        if data.X_train.shape[0] == n_all:
            return None, "refit diverged at epoch 0 (loss nan)"
        return real(data, *args, **kwargs)

    monkeypatch.setattr(train, "fit_fixed", diverge_on_every_row)
    path = tmp_path / "kept.zip"
    res = _finalize(insurance, path, {**MLP, "epochs": 2}, epochs_hint=None)
    assert res["epochs_trained"] == 2
    assert res["final_model_rows"] == res["evaluated_model_rows"] == n_tv
    assert res["final_model_splits"] == ["train", "val"]
    assert "refit diverged" in res["note"] and "kept the evaluated model" in res["note"]
    predictor = load_artifact(str(path))
    assert predictor.config["note"] == res["note"] and _metrics_json(path)["final_model_rows"] == n_tv
    # The artifact is the evaluated model: it reproduces the reported test metrics.
    served = predictor.predict_encoded(a["X_test"].astype(np.float32))
    assert metrics.all_metrics("regression", a["y_test"], served) == pytest.approx(res["test_metrics"], rel=1e-6)
