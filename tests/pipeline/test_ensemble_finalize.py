"""finalize with a library of trials' validation predictions: the ensemble it chooses, the
artifact that serves the weighted average, and a member whose refit fails."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from nexus_node.pipeline import gbt, metrics, train
from nexus_node.pipeline.artifact import load_artifact
from nexus_node.pipeline.result import TrainResult, scored_rows
from nexus_node.runner.arrays import data_for, splits_for
from nexus_node.runner.context import LocalContext
from nexus_node.runner.tasks import run_task

GBT = {"family": "gbt", "learning_rate": 0.1, "max_iter": 60, "max_leaf_nodes": 15,
       "min_samples_leaf": 10, "l2_regularization": 0.1}
MLP = {"family": "mlp", "n_layers": 1, "width": 16, "activation": "relu", "dropout": 0.0,
       "learning_rate": 3e-3, "weight_decay": 1e-5, "batch_size": 128, "epochs": 30}


def _finalize(prepared, path, library, best=GBT):
    return run_task({"task": "finalize", "params": best, "trial": 0, "files": prepared["files"],
                     "task_type": "regression", "n_classes": 0, "metric": "r2", "seed": 0, "threads": 1,
                     "epochs_hint": 30, "preprocessing": prepared["preprocessing"],
                     "artifact_path": str(path), "library": library}, LocalContext())


def _library(prepared, tmp_path, noise_a, noise_b):
    """Two candidates whose validation predictions are the truth plus the given errors: the
    errors, not the configurations, decide what selection picks."""
    y = scored_rows(splits_for(prepared["files"]))
    library = []
    for trial, (params, noise) in enumerate([(GBT, noise_a), (MLP, noise_b)]):
        path = tmp_path / f"trial{trial}.npy"
        np.save(path, (y + noise).astype(np.float32), allow_pickle=False)
        library.append({"trial": trial, "params": params, "epochs": 20, "predictions_path": str(path)})
    return library


def _even_pair(prepared, tmp_path, seed):
    """A library of two trials whose predictions err independently and equally: selection
    averages them."""
    rng = np.random.default_rng(seed)
    y = scored_rows(splits_for(prepared["files"]))
    scale = float(np.std(y))
    return _library(prepared, tmp_path, rng.normal(scale=scale / 2, size=y.size),
                    rng.normal(scale=scale / 2, size=y.size))


def test_trials_keep_their_predictions_on_every_scored_row_at_the_best_epoch(insurance):
    files = insurance["files"]
    y = scored_rows(splits_for(files))
    res = gbt.train_and_score_gbt(splits_for(files), GBT, "regression", "r2", 0)
    assert res.predictions is not None and res.predictions.shape == y.shape
    # The trial's value is the mean of its folds' scores, each on its own rows, at the best step.
    sizes = [len(f["y_val"]) for f in splits_for(files)]
    bounds = np.cumsum([0] + sizes)
    folds = [metrics.r2(y[a:b], res.predictions[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    assert res.value == pytest.approx(np.mean(folds))
    mlp = train.train_and_score(data_for(files, "regression", 0), MLP, "regression", 0, "r2", 0)
    assert mlp.predictions is not None and mlp.predictions.shape == y.shape


def test_an_ensemble_is_served_as_the_weighted_average_of_its_members(insurance, tmp_path):
    library = _even_pair(insurance, tmp_path, 0)
    path = tmp_path / "ensemble.zip"
    res = _finalize(insurance, path, library)
    assert [m["trial"] for m in res["members"]] in ([0, 1], [1, 0]), res["selection"]
    assert sum(m["weight"] for m in res["members"]) == pytest.approx(1.0)
    assert "an ensemble of 2 trials" in res["selection"] and res["dropped"] == []
    with zipfile.ZipFile(path) as z:
        config = json.loads(z.read("config.json"))
        assert config["family"] == "ensemble" and config["format_version"] == 2
        assert {n for n in z.namelist() if n.startswith("members/")} == {
            f"members/{i}/{f}" for i, m in enumerate(config["members"])
            for f in (["model.pt"] if m["family"] == "mlp" else ["nodes.npy", "roots.npy"])}
    served = load_artifact(str(path))
    X = np.asarray(np.load(insurance["files"]["X_test"]), dtype=np.float32)
    by_hand = sum(w * m.predict_encoded(X) for w, m in served.members)
    np.testing.assert_allclose(served.predict_encoded(X), by_hand, rtol=1e-9)
    # Each member keeps its own target scale and its band.
    assert all(m.preprocessing["target"]["transform"]["band"] for _, m in served.members)


def test_when_the_ensemble_is_no_better_the_single_best_trial_is_kept(insurance, tmp_path):
    y = scored_rows(splits_for(insurance["files"]))
    library = _library(insurance, tmp_path, np.zeros(y.size), np.full(y.size, float(np.std(y))))
    path = tmp_path / "single.zip"
    res = _finalize(insurance, path, library)
    assert [m["trial"] for m in res["members"]] == [0] and "kept the single best trial" in res["selection"]
    with zipfile.ZipFile(path) as z:
        assert json.loads(z.read("config.json"))["format_version"] == 1


def test_a_member_whose_refit_fails_drops_out_and_the_job_keeps_the_rest(insurance, tmp_path, monkeypatch):
    library = _even_pair(insurance, tmp_path, 1)
    # The network diverges however it is refitted: on the train+val rows, and as a trial.
    monkeypatch.setattr(train, "fit_fixed", lambda *a, **k: (None, "refit diverged at epoch 3 (loss nan)"))
    monkeypatch.setattr(train, "train_and_score", lambda *a, **k: TrainResult(None, 1, None, "FAIL", "diverged", 1))
    path = tmp_path / "rest.zip"
    res = _finalize(insurance, path, library)
    assert [(m["trial"], m["weight"]) for m in res["members"]] == [(0, 1.0)]
    assert res["dropped"] and res["dropped"][0].startswith("trial 1: the best configuration no longer trains")
    assert "dropped after a failed refit" in res["selection"]
    assert load_artifact(str(path)).config["family"] == "gbt"


def test_without_the_best_trial_s_predictions_the_best_trial_is_fitted_alone(insurance, tmp_path):
    y = scored_rows(splits_for(insurance["files"]))
    rng = np.random.default_rng(2)
    library = _library(insurance, tmp_path, rng.normal(size=y.size), rng.normal(size=y.size))
    # The node could not fetch trial 0's predictions: the library it sends starts at trial 1.
    res = _finalize(insurance, tmp_path / "a.zip", [library[1], {**library[1], "trial": 7}])
    assert [m["trial"] for m in res["members"]] == [0] and "no other trial" in res["selection"]


def test_predictions_of_another_shape_are_left_out(insurance, tmp_path):
    y = scored_rows(splits_for(insurance["files"]))
    rng = np.random.default_rng(3)
    library = _library(insurance, tmp_path, rng.normal(size=y.size), rng.normal(size=y.size))
    np.save(library[1]["predictions_path"], np.zeros((y.size, 2), dtype=np.float32), allow_pickle=False)
    res = _finalize(insurance, tmp_path / "b.zip", library)
    assert [m["trial"] for m in res["members"]] == [0] and "too few" in res["selection"]


def test_an_ensemble_without_the_best_trial_that_loses_a_member_serves_the_best_trial(
        insurance, tmp_path, monkeypatch):
    y = scored_rows(splits_for(insurance["files"]))
    scale = float(np.std(y))
    rng = np.random.default_rng(4)
    # Trial 0 (the best, by the search) predicts badly here, so selection leaves it out and
    # averages trials 1 (trees) and 2 (the network); then the network's refit fails.
    library = _library(insurance, tmp_path, rng.normal(scale=scale / 2, size=y.size),
                       rng.normal(scale=scale / 2, size=y.size))
    bad = tmp_path / "bad.npy"
    np.save(bad, (y + 5 * scale).astype(np.float32), allow_pickle=False)
    library = [{"trial": 0, "params": GBT, "epochs": 20, "predictions_path": str(bad)},
               {**library[0], "trial": 1}, {**library[1], "trial": 2}]
    monkeypatch.setattr(train, "fit_fixed", lambda *a, **k: (None, "refit diverged at epoch 3 (loss nan)"))
    monkeypatch.setattr(train, "train_and_score", lambda *a, **k: TrainResult(None, 1, None, "FAIL", "diverged", 1))
    res = _finalize(insurance, tmp_path / "c.zip", library)
    assert [(m["trial"], m["weight"]) for m in res["members"]] == [(0, 1.0)]
    assert "trial 2:" in res["selection"] and "the best trial alone serves instead" in res["selection"]


def test_a_best_trial_that_leads_only_on_a_handful_of_rows_gives_way_to_the_runner_up(
        insurance, tmp_path, monkeypatch):
    from functools import partial

    from nexus_node.pipeline import ensemble

    y = scored_rows(splits_for(insurance["files"]))
    scale = float(np.std(y)) / 10
    rng = np.random.default_rng(5)
    lead_noise = rng.normal(scale=scale, size=y.size)
    rival_noise = rng.normal(scale=0.6 * scale, size=y.size)
    # The runner-up (the network) is closer on every row but three, which it misses so that
    # the search's best (the trees) leads on R² by a hair.
    rival_noise[:3] = 0.0
    gap = np.sum(lead_noise ** 2) - np.sum(rival_noise ** 2)
    rival_noise[:3] = np.sqrt(gap * 1.01 / 3)
    library = _library(insurance, tmp_path, lead_noise, rival_noise)
    assert metrics.r2(y, y + lead_noise) > metrics.r2(y, y + rival_noise)
    # One member at most: the robust check between single models, not the ensemble, decides.
    monkeypatch.setattr(ensemble, "select", partial(ensemble.select, max_members=1))
    path = tmp_path / "robust.zip"
    res = _finalize(insurance, path, library)
    assert [(m["trial"], m["weight"]) for m in res["members"]] == [(1, 1.0)], res["selection"]
    assert "trial 1 serves instead of trial 0: its lead in r2 came from the" in res["selection"]
    assert load_artifact(str(path)).config["family"] == "mlp"


def _base(prepared, trial=0, best=GBT):
    return {"params": best, "trial": trial, "files": prepared["files"], "task_type": "regression", "n_classes": 0,
            "metric": "r2", "seed": 0, "threads": 1, "epochs_hint": 30, "preprocessing": prepared["preprocessing"]}


def _apart(prepared, tmp_path, library, fail=()):
    """select, one refit per member (each as its own node would run it), then finalize with
    the members' files, as the coordinator runs an ensemble across the mesh."""
    picked = run_task({**_base(prepared), "task": "select", "library": library}, LocalContext())
    assert all("predictions_path" not in c["candidate"] for c in picked["chosen"])   # nothing local travels
    chosen = []
    for i, c in enumerate(picked["chosen"]):
        if c["candidate"]["trial"] in fail:
            chosen.append({**c, "candidate": {**c["candidate"], "refit_error": "its node left while running it"}})
            continue
        path = tmp_path / f"member{i}.zip"
        out = run_task({**_base(prepared), "task": "refit", "candidate": c["candidate"], "weight": c["weight"],
                        "artifact_path": str(path)}, LocalContext())
        assert out["trial"] == c["candidate"]["trial"] and out["weight"] == c["weight"]
        chosen.append({**c, "candidate": {**c["candidate"], "member_path": str(path), "node_id": f"node-{i}"}})
    path = tmp_path / "apart.zip"
    res = run_task({**_base(prepared), "task": "finalize", "artifact_path": str(path), "chosen": chosen,
                    "selection": picked["selection"]}, LocalContext())
    return res, path


def test_members_refitted_apart_assemble_into_the_model_one_finalize_makes(insurance, tmp_path):
    library = _even_pair(insurance, tmp_path, 0)
    whole = _finalize(insurance, tmp_path / "whole.zip", library)
    apart, path = _apart(insurance, tmp_path, library)
    assert len(apart["members"]) == 2 and apart["selection"] == whole["selection"]
    assert [(m["trial"], m["weight"]) for m in apart["members"]] == [(m["trial"], m["weight"]) for m in whole["members"]]
    assert {m["node_id"] for m in apart["members"]} == {"node-0", "node-1"}
    for name, value in whole["test_metrics"].items():
        assert apart["test_metrics"][name] == pytest.approx(value, rel=1e-6), name
    assert list(apart["feature_importance"]) == list(whole["feature_importance"])
    for name, value in whole["feature_importance"].items():
        assert apart["feature_importance"][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name
    X = np.asarray(np.load(insurance["files"]["X_test"]), dtype=np.float32)
    np.testing.assert_allclose(load_artifact(str(path)).predict_encoded(X),
                               load_artifact(str(tmp_path / "whole.zip")).predict_encoded(X), rtol=1e-5)


def test_a_member_whose_refit_failed_on_its_node_drops_out_of_the_assembled_ensemble(insurance, tmp_path):
    library = _even_pair(insurance, tmp_path, 1)
    res, path = _apart(insurance, tmp_path, library, fail=(1,))
    assert [(m["trial"], m["weight"]) for m in res["members"]] == [(0, 1.0)]
    assert res["dropped"] == ["trial 1: its node left while running it"]
    assert "dropped after a failed refit: trial 1: its node left while running it" in res["selection"]
    assert load_artifact(str(path)).config["family"] == "gbt"


def test_a_member_file_is_checked_before_it_is_read(tmp_path):
    from nexus_node.errors import InvalidInput
    from nexus_node.pipeline.artifact import read_member

    not_zip = tmp_path / "m.zip"
    not_zip.write_bytes(b"PK not really")
    with pytest.raises(InvalidInput, match="not a fitted ensemble member"):
        read_member(str(not_zip))
    model = tmp_path / "model.zip"
    with zipfile.ZipFile(model, "w") as z:
        z.writestr("member.json", json.dumps({"format": "nexus-member", "format_version": 9, "family": "gbt"}))
        z.writestr("evaluated_predictions.npy", b"")
    with pytest.raises(InvalidInput, match="member format 'nexus-member' v9"):
        read_member(str(model))
