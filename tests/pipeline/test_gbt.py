"""The gradient-boosted trees family: chunked training with pruning reports, export to
plain arrays, a numpy walker equal to scikit-learn, and finalize -> artifact -> predict."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from nexus_node.pipeline import csvio, gbt, trees
from nexus_node.pipeline.artifact import MEMBERS, WEIGHTS, load_artifact
from nexus_node.runner.context import LocalContext
from nexus_node.runner.tasks import run_task
from tests.conftest import dataset
from tests.pipeline.helpers import arrays

PARAMS = {"family": "gbt", "learning_rate": 0.1, "max_iter": 60, "max_leaf_nodes": 15,
          "min_samples_leaf": 10, "l2_regularization": 0.1}


def _columns(prepared):
    return np.load(prepared["files"]["tree_columns"], allow_pickle=False)


def test_tree_columns_leave_out_only_the_piecewise_linear_bins(insurance):
    names = insurance["feature_names"]
    kept = [names[i] for i in _columns(insurance)]
    assert kept == [n for n in names if "__bin" not in n] and "bmi" in kept and "smoker=yes" in kept
    assert trees.tree_columns(["a", "a__bin0", "c=x__bin1"]).tolist() == [0, 2]


def test_chunks_report_every_step_and_a_true_answer_prunes(insurance):
    a = arrays(insurance)
    seen = []
    res = gbt.train_and_score_gbt(a, PARAMS, "regression", "r2", 0, columns=_columns(insurance),
                                  report=lambda v, step: seen.append((step, v)) or step == 2)
    assert res.state == "PRUNED" and [s for s, _ in seen] == [0, 1, 2]
    assert res.value == max(v for _, v in seen) and res.epochs % gbt.CHUNK == 0
    full = gbt.train_and_score_gbt(a, PARAMS, "regression", "r2", 0, columns=_columns(insurance))
    assert full.state == "COMPLETE" and full.value > 0.8 and 0 < full.epochs <= PARAMS["max_iter"]


@pytest.mark.parametrize("fixture", ["insurance", "titanic"])
def test_numpy_walker_equals_scikit_learn_on_held_out_rows(fixture, request):
    prepared = request.getfixturevalue(fixture)
    a, cols = arrays(prepared), _columns(prepared)
    task = prepared["profile"]["task"]
    transform = prepared["preprocessing"]["target"].get("transform")
    model = gbt.fit_gbt(a["X_train"][:, cols], a["y_train"], PARAMS, task, 40, 0, 1, transform)
    weights, meta = gbt.export_trees(model)
    meta["columns"] = cols.tolist()
    # Missing values follow scikit-learn's missing_go_to_left rule too.
    X = a["X_test"].astype(np.float64)
    X[::7, cols[0]] = np.nan
    ours = trees.predict_trees(weights, meta, X, task, transform)
    ref = gbt.predict_model(model, X[:, cols], task, transform)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


def test_multiclass_walker_equals_scikit_learn():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5).astype(int)
    model = gbt.fit_gbt(X, y, PARAMS, "multiclass", 20, 0)
    weights, meta = gbt.export_trees(model)
    assert meta["trees_per_iteration"] == 3
    meta["columns"] = [0, 1, 2, 3]
    np.testing.assert_allclose(trees.predict_trees(weights, meta, X, "multiclass", None),
                               model.predict_proba(X), rtol=1e-6, atol=1e-9)


def test_finalize_writes_a_pickle_free_tree_artifact_that_predicts(titanic, tmp_path):
    classes = titanic["profile"]["classes"]
    req = {"task": "finalize", "params": PARAMS, "files": titanic["files"], "task_type": "binary",
           "n_classes": len(classes), "metric": "roc_auc", "seed": 0, "threads": 1, "epochs_hint": 40,
           "preprocessing": titanic["preprocessing"], "artifact_path": str(tmp_path / "m.zip")}
    result = run_task(req, LocalContext())
    assert result["test_metrics"]["roc_auc"] > 0.8 and result["epochs_trained"] == 40
    assert list(result["feature_importance"])[0] == "Sex"
    with zipfile.ZipFile(tmp_path / "m.zip") as z:
        assert sorted(z.namelist()) == sorted(MEMBERS + WEIGHTS["gbt"])
        config = json.loads(z.read("config.json"))
    assert config["family"] == "gbt" and config["trees_per_iteration"] == 1 and "n_in" not in config
    df, _ = csvio.read_table(dataset("titanic.csv"))
    out = load_artifact(str(tmp_path / "m.zip")).predict(df.iloc[:30])
    probs = np.array([p["probabilities"] for p in out["predictions"]])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    survived = df.iloc[:30]["Survived"].astype(int).to_numpy()
    assert probs[survived == 1, 1].mean() > probs[survived == 0, 1].mean() + 0.2
