"""finalize -> artifact -> predict, on real datasets, through ``run_task`` as a runner calls it."""

import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from nexus_node.errors import InvalidInput
from nexus_node.pipeline import csvio
from nexus_node.pipeline.artifact import MEMBERS, WEIGHTS, load_artifact
from nexus_node.pipeline.metrics import default_metric
from nexus_node.pipeline.train import train_and_score
from nexus_node.runner.context import LocalContext
from nexus_node.runner.tasks import run_task
from tests.conftest import dataset
from tests.pipeline.helpers import arrays, default_config, prepare, write_csv


def _finalize(prepared, out, epochs_hint=None, **params):
    task = prepared["profile"]["task"]
    classes = prepared["profile"].get("classes", [])
    req = {
        "task": "finalize", "params": {**default_config(prepared), **params}, "files": prepared["files"],
        "task_type": task, "n_classes": len(classes), "metric": default_metric(task), "seed": 0, "threads": 1,
        "preprocessing": prepared["preprocessing"], "artifact_path": str(out), "split_seed": 0,
        "meta": {"job_id": "job-1", "use_case": "test"},
    }
    if epochs_hint is not None:
        req["epochs_hint"] = epochs_hint
    return run_task(req, LocalContext())


@pytest.fixture(scope="module")
def insurance_model(insurance, tmp_path_factory):
    a = arrays(insurance)
    trial = train_and_score(a, default_config(insurance), "regression", 0, "r2", seed=0, threads=1)
    path = tmp_path_factory.mktemp("model") / "insurance.zip"
    return _finalize(insurance, path, epochs_hint=trial.epochs), path


@pytest.mark.slow
def test_insurance_finalize_tests_above_080_and_ranks_smoker_first(insurance_model):
    result, _ = insurance_model
    assert set(result["test_metrics"]) == {"r2", "rmse", "mae"}
    assert result["test_metrics"]["r2"] > 0.80
    assert 1_000 < result["test_metrics"]["mae"] < result["test_metrics"]["rmse"] < 10_000   # dollars
    imp = result["feature_importance"]
    assert list(imp)[0] == "smoker" and list(imp.values()) == sorted(imp.values(), reverse=True)
    assert set(imp) == set(result["input_columns"])
    assert result["classes"] == [] and result["epochs_trained"] >= 1


def test_artifact_holds_only_json_and_a_weights_only_state_dict(insurance_model):
    _, path = insurance_model
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == sorted(MEMBERS + WEIGHTS["mlp"])
        for name in MEMBERS:
            json.loads(z.read(name))
        state = torch.load(io.BytesIO(z.read("model.pt")), weights_only=True)
        config = json.loads(z.read("config.json"))
        prep = json.loads(z.read("preprocessing.json"))
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert config["family"] == "mlp" and config["task"] == "regression"
    assert config["n_in"] == len(prep["feature_names"]) == state["0.weight"].shape[1]
    assert config["meta"]["job_id"] == "job-1" and config["versions"]["torch"] == torch.__version__


def test_predict_in_original_units_ignores_extra_columns_and_names_missing_ones(insurance_model, tmp_path):
    _, path = insurance_model
    predictor = load_artifact(str(path))
    df, _ = csvio.read_table(dataset("insurance.csv"))
    rows = df.iloc[:50]
    out = predictor.predict(rows)
    values = np.array([p["value"] for p in out["predictions"]])
    assert out["classes"] == [] and len(values) == 50
    assert np.corrcoef(values, rows["charges"].astype(float))[0, 1] > 0.85
    assert out["predictions"][0]["label"] == str(values[0]) and out["predictions"][0]["probabilities"] == []
    extra = predictor.predict(rows.assign(note="x", other=1).drop(columns=["charges"]))
    assert extra == out
    with pytest.raises(InvalidInput, match=r"missing column\(s\) \['bmi', 'smoker'\]"):
        predictor.predict(rows.drop(columns=["smoker", "bmi"]))
    # Through the task, from a CSV file, in row order; a cp1252 file decodes too.
    csv = write_csv(tmp_path, "age,sex,bmi,children,smoker,region,caf\xe9\n"
                              "19,female,27.9,0,yes,southwest,1\n40,male,30,2,no,northeast,2\n"
                              .encode("cp1252"))
    ctx = LocalContext()
    res = run_task({"task": "predict", "artifact_path": str(path), "csv_path": str(csv)}, ctx)
    assert res == {"classes": [], "count": 2, "warnings": {
        "rows": 2, "unseen_category_rows": 0, "unseen_categories": {}, "empty_rows": 0}}
    # Predictions stream out as events, in batches, in row order.
    assert [e["kind"] for e in ctx.events] == ["predictions"] and ctx.events[0]["start"] == 0
    smoker, non_smoker = (p["value"] for p in ctx.events[0]["rows"])
    assert smoker > non_smoker


def test_not_an_artifact_is_refused(tmp_path):
    bad = write_csv(tmp_path, "not a zip", "model.zip")
    with pytest.raises(InvalidInput, match="not a Nexus model"):
        load_artifact(str(bad))
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("config.json", "{}")
    with pytest.raises(InvalidInput, match="lacks"):
        load_artifact(str(tmp_path / "other.zip"))


@pytest.mark.slow
def test_binary_finalize_and_predict_probabilities(titanic, tmp_path):
    result = _finalize(titanic, tmp_path / "t.zip", epochs_hint=5)
    assert set(result["test_metrics"]) == {"accuracy", "f1", "roc_auc", "log_loss"}
    assert result["test_metrics"]["roc_auc"] > 0.8 and result["classes"] == ["0", "1"]
    assert list(result["feature_importance"])[0] == "Sex"
    df, _ = csvio.read_table(dataset("titanic.csv"))
    out = load_artifact(str(tmp_path / "t.zip")).predict(df.iloc[:20])
    for p in out["predictions"]:
        assert p["label"] in ("0", "1") and p["label"] == out["classes"][int(p["value"])]
        assert sum(p["probabilities"]) == pytest.approx(1.0) and len(p["probabilities"]) == 2


@pytest.mark.slow
def test_multiclass_finalize_reports_every_metric(tmp_path):
    prepared = prepare("insurance.csv", "region", tmp_path / "prep")
    assert prepared["profile"]["task"] == "multiclass"
    result = _finalize(prepared, tmp_path / "m.zip", epochs_hint=3)
    assert set(result["test_metrics"]) == {"accuracy", "f1", "roc_auc", "log_loss"}
    assert all(np.isfinite(v) for v in result["test_metrics"].values())
    assert len(result["classes"]) == 4
    out = load_artifact(str(tmp_path / "m.zip")).predict(pd.read_csv(dataset("insurance.csv"), dtype=str).iloc[:3])
    assert all(len(p["probabilities"]) == 4 for p in out["predictions"])


def test_finalize_without_a_hint_uses_params_epochs_and_survives_a_diverging_refit(insurance, tmp_path):
    # A learning rate this high diverges on train+val; finalize falls back to the
    # early-stopped model (which also diverges here), and then says why it cannot.
    from nexus_node.errors import FailedPrecondition

    with pytest.raises(FailedPrecondition, match="no longer trains"):
        _finalize(insurance, tmp_path / "x.zip", learning_rate=1e6)
    assert not (tmp_path / "x.zip").exists()
    result = _finalize(insurance, tmp_path / "y.zip", epochs=2)
    assert result["epochs_trained"] == 2
