"""The runner's task entry point, with trials reporting to a real Optuna gRPC storage server."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from typing import Any, Iterator

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from nexus_node.errors import FailedPrecondition, InvalidInput
from nexus_node.pipeline import metrics
from nexus_node.pipeline.result import scored_rows
from nexus_node.runner import tasks
from nexus_node.runner.arrays import splits_for
from nexus_node.runner.context import LocalContext
from nexus_node.runner.tasks import run_task
from nexus_node.study import pruning
from nexus_node.study.studies import PREDICTIONS_ATTR
from tests.pipeline.helpers import default_config, prepare
from tests.storage_server import storage_server

PRUNER = {"kind": "median", "n_startup_trials": 5, "n_warmup_steps": 5}


@pytest.fixture(scope="module")
def insurance(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return prepare("insurance.csv", "charges", tmp_path_factory.mktemp("insurance"))


@pytest.fixture(params=["journal", "memory"])
def server(request, tmp_path) -> Iterator[tuple[optuna.storages.BaseStorage, dict[str, Any]]]:
    """A node's storage service on a free loopback port, over the storage kinds the node
    uses (journal) and the simplest one (in memory)."""
    if request.param == "journal":
        backend = optuna.storages.journal.JournalFileBackend(str(tmp_path / "journal.log"))
        storage: optuna.storages.BaseStorage = optuna.storages.JournalStorage(backend)
    else:
        storage = optuna.storages.InMemoryStorage()
    with storage_server(storage) as port:
        yield storage, {"host": "127.0.0.1", "port": port, "token": None}
    # A runner keeps one proxy per address (a node's storage outlives its runners); a later
    # test's server may get this port back with a different storage behind it.
    tasks._storages.clear()
    tasks._studies.clear()


def _trial_req(prepared, storage_spec, study_name, trial_id, **params) -> dict[str, Any]:
    return {
        "task": "trial", "study_name": study_name, "trial_id": trial_id,
        "params": {**default_config(prepared), **params}, "files": prepared["files"],
        "task_type": "regression", "n_classes": 0, "metric": "r2", "maximize": True, "seed": 0,
        "threads": 1, "storage": storage_spec, "pruner": PRUNER,
    }


def test_trial_completes_in_the_study_with_intermediate_values(insurance, server):
    storage, spec = server
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    trial = study.ask()
    ctx = LocalContext()
    out = run_task(_trial_req(insurance, spec, "s", trial._trial_id), ctx)
    assert out["state"] == "COMPLETE" and out["value"] > 0.80 and out["epochs"] >= 1
    frozen = storage.get_trial(trial._trial_id)
    assert frozen.state == TrialState.COMPLETE and frozen.value == pytest.approx(out["value"])
    assert frozen.user_attrs["epochs"] == out["epochs"]
    run = frozen.last_step + 1
    assert sorted(frozen.intermediate_values) == list(range(run)) and run >= out["epochs"]
    assert max(frozen.intermediate_values.values()) == pytest.approx(out["value"])
    assert [e["epoch"] for e in ctx.events] == list(range(run)) and ctx.events[0]["kind"] == "epoch"


@pytest.mark.parametrize("family", ["mlp", "gbt"])
def test_a_completed_trial_keeps_its_validation_predictions_under_their_hash(insurance, server, tmp_path, family):
    storage, spec = server
    study = optuna.create_study(study_name=f"keep-{family}", storage=storage, direction="maximize")
    trial = study.ask()
    params = {} if family == "mlp" else {"family": "gbt", "learning_rate": 0.1, "max_iter": 40,
                                         "max_leaf_nodes": 15, "min_samples_leaf": 10, "l2_regularization": 0.1}
    path = tmp_path / "predictions.npy"
    out = run_task({**_trial_req(insurance, spec, f"keep-{family}", trial._trial_id, **params),
                    "predictions_path": str(path)}, LocalContext())
    assert out["state"] == "COMPLETE"
    assert out["predictions_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert storage.get_trial(trial._trial_id).user_attrs[PREDICTIONS_ATTR] == out["predictions_sha256"]
    y = scored_rows(splits_for(insurance["files"]))
    kept = np.load(path, allow_pickle=False)
    assert kept.shape == y.shape and kept.dtype == np.float32
    # The trial's value is its folds' mean score on exactly these predictions.
    bounds = np.cumsum([0] + [len(f["y_val"]) for f in splits_for(insurance["files"])])
    assert out["value"] == pytest.approx(np.mean([
        metrics.r2(y[a:b], kept[a:b].astype(np.float64)) for a, b in zip(bounds[:-1], bounds[1:])]), abs=1e-5)


def _study_of_good_trials(storage, name: str, pruner: optuna.pruners.BasePruner | None = None,
                          n: int = 5) -> optuna.Study:
    """A study whose ``n`` finished trials reported 0.99 for 40 steps: any real trial is
    behind them. With a pruner, each report is followed by ``should_prune`` as a runner
    does, so rung-based pruners record the rungs these trials passed."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", pruner=pruner)
    for _ in range(n):
        t = study.ask()
        for step in range(40):
            t.report(0.99, step)
            if pruner is not None:
                assert not t.should_prune()
        study.tell(t, 0.99)
    return study


def test_trial_behind_the_median_is_pruned(insurance, server):
    storage, spec = server
    trial = _study_of_good_trials(storage, "p").ask()
    out = run_task(_trial_req(insurance, spec, "p", trial._trial_id), LocalContext())
    assert out["state"] == "PRUNED" and out["message"].startswith("pruned at epoch")
    frozen = storage.get_trial(trial._trial_id)
    assert frozen.state == TrialState.PRUNED
    # Reports run ahead of the pruner's answer by at most a few epochs.
    assert PRUNER["n_warmup_steps"] < len(frozen.intermediate_values) < 15


HYPERBAND = pruning.spec_for("hyperband", 40, 200)


def test_trial_behind_its_rung_is_pruned_by_hyperband(insurance, server):
    storage, spec = server
    pruner, warmup = pruning.build(HYPERBAND)
    # Eight good trials: both of Hyperband's brackets (5..40 steps, factor 3) hold some, so
    # whichever bracket the new trial hashes to has rungs to compare it with.
    trial = _study_of_good_trials(storage, "h", pruner, n=8).ask()
    out = run_task({**_trial_req(insurance, spec, "h", trial._trial_id), "pruner": HYPERBAND}, LocalContext())
    assert out["state"] == "PRUNED" and out["message"].startswith("pruned at epoch")
    frozen = storage.get_trial(trial._trial_id)
    assert frozen.state == TrialState.PRUNED
    # Stopped at its bracket's first rung (step 5 or 15), plus the epochs reported while
    # the answer travelled; the good trials ran 40.
    assert warmup < len(frozen.intermediate_values) < 25
    assert any(k.startswith("completed_rung_") for k in frozen.system_attrs)


def test_cancelled_trial_is_told_pruned(insurance, server):
    storage, spec = server
    study = optuna.create_study(study_name="c", storage=storage, direction="maximize")
    trial = study.ask()
    ctx = LocalContext()
    ctx.cancel_requested = True
    out = run_task(_trial_req(insurance, spec, "c", trial._trial_id), ctx)
    assert out == {"state": "PRUNED", "value": None, "epochs": 0, "message": "stopped: cancelled"}
    assert storage.get_trial(trial._trial_id).state == TrialState.PRUNED


def test_diverging_trial_is_told_failed_with_the_reason(insurance, server):
    storage, spec = server
    study = optuna.create_study(study_name="f", storage=storage, direction="maximize")
    trial = study.ask()
    out = run_task(_trial_req(insurance, spec, "f", trial._trial_id, learning_rate=1e6), LocalContext())
    assert out["state"] == "FAIL" and out["value"] is None and "diverged" in out["message"]
    frozen = storage.get_trial(trial._trial_id)
    assert frozen.state == TrialState.FAIL and "diverged" in frozen.user_attrs["fail_reason"]


def test_trial_finished_elsewhere_is_refused(insurance, server):
    storage, spec = server
    study = optuna.create_study(study_name="d", storage=storage, direction="maximize")
    trial = study.ask()
    study.tell(trial, state=TrialState.FAIL)   # e.g. the node declared the worker dead
    with pytest.raises(FailedPrecondition, match="already FAIL"):
        run_task(_trial_req(insurance, spec, "d", trial._trial_id), LocalContext())
    assert storage.get_trial(trial._trial_id).state == TrialState.FAIL


def test_bad_requests_are_invalid_input(insurance):
    spec = {"host": "127.0.0.1", "port": 1, "token": None}
    with pytest.raises(InvalidInput, match="unknown task 'train'"):
        run_task({"task": "train"}, LocalContext())
    with pytest.raises(InvalidInput, match=r"lacks \['target'"):
        run_task({"task": "prepare", "csv_path": "x"}, LocalContext())
    with pytest.raises(InvalidInput, match="maximize=False"):
        run_task({**_trial_req(insurance, spec, "s", 0), "maximize": False}, LocalContext())
    with pytest.raises(InvalidInput, match="does not apply to regression"):
        run_task({**_trial_req(insurance, spec, "s", 0), "metric": "accuracy"}, LocalContext())


def test_ping_reports_the_device():
    out = run_task({"task": "ping"}, LocalContext())
    assert out["pong"] is True and out["device"] in ("cpu", "cuda") and out["torch"]
    assert (out["cuda_name"] is None) == (out["device"] == "cpu")
    # The first ping in a process warmed torch up; later pings report the same figure.
    assert out["warm_up_s"] > 0 and run_task({"task": "ping"}, LocalContext())["warm_up_s"] == out["warm_up_s"]


def test_a_ping_without_warm_up_leaves_torch_unloaded():
    code = ("import sys\n"
            "from nexus_node.runner.tasks import run_task\n"
            "from nexus_node.runner.context import LocalContext\n"
            "out = run_task({'task': 'ping', 'warm_up': False}, LocalContext())\n"
            "assert out['pong'] and out['torch'] is None, out\n"
            "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_training_runner_does_not_load_pandas():
    code = ("import sys, nexus_node.runner.tasks; "
            "bad = {'pandas', 'sklearn'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


GBT = {"family": "gbt", "learning_rate": 0.1, "max_iter": 200, "max_leaf_nodes": 15, "min_samples_leaf": 10,
       "l2_regularization": 0.1}


def _gbt_req(prepared, spec, study_name, trial_id):
    # Only the tree parameters: an MLP default merged in would not change a tree trial,
    # but the request should be what the node sends.
    return {**_trial_req(prepared, spec, study_name, trial_id), "params": dict(GBT)}


def test_tree_trial_reports_iteration_chunks_and_completes_in_the_study(insurance, server):
    storage, spec = server
    study = optuna.create_study(study_name="g", storage=storage, direction="maximize")
    trial = study.ask()
    ctx = LocalContext()
    out = run_task(_gbt_req(insurance, spec, "g", trial._trial_id), ctx)
    assert out["state"] == "COMPLETE" and out["value"] > 0.80 and out["epochs"] % 10 == 0
    frozen = storage.get_trial(trial._trial_id)
    assert frozen.state == TrialState.COMPLETE and frozen.user_attrs["epochs"] == out["epochs"]
    steps = sorted(frozen.intermediate_values)
    assert steps == list(range(len(steps))) and max(frozen.intermediate_values.values()) == pytest.approx(out["value"])


def test_tree_trial_behind_the_median_is_pruned(insurance, server):
    storage, spec = server
    trial = _study_of_good_trials(storage, "gp").ask()
    # A slow learning rate keeps improving for many chunks, so the trial is still running
    # when the pruner's (asynchronous) answer arrives, even on a loaded machine.
    req = _gbt_req(insurance, spec, "gp", trial._trial_id)
    req["params"]["learning_rate"] = 0.02
    out = run_task(req, LocalContext())
    assert out["state"] == "PRUNED" and out["message"].startswith("pruned at step")
    assert PRUNER["n_warmup_steps"] < len(storage.get_trial(trial._trial_id).intermediate_values) < 15


@pytest.fixture(scope="module")
def books(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A table with high-cardinality text columns (titles, authors, states)."""
    return prepare("book_banning.csv", "removed", tmp_path_factory.mktemp("books"), drop_columns=["rownames"])


def test_a_trial_trains_on_the_category_encoding_it_was_given(books, server):
    from nexus_node.pipeline import gbt
    from nexus_node.pipeline import target_encoding as te
    from nexus_node.pipeline.folds import fold_splits
    from nexus_node.runner.arrays import data_for

    storage, spec = server
    files = books["files"]
    values = {}
    for family, params in (("gbt", GBT), ("mlp", {**default_config(books), "epochs": 3})):
        for encoding in ("onehot", "target"):
            name = f"enc-{family}-{encoding}"
            trial = optuna.create_study(study_name=name, storage=storage, direction="maximize").ask()
            out = run_task({**_trial_req(books, spec, name, trial._trial_id), "task_type": "binary", "n_classes": 2,
                            "metric": "roc_auc", "params": {**params, "category_encoding": encoding}}, LocalContext())
            assert out["state"] == "COMPLETE", out
            values[family, encoding] = out["value"]
    # The tree trial's score is that of trees on each fold's own target encoding.
    arrays = {k: np.load(files[k]) for k in ("X_train", "y_train", "X_val", "y_val", "codes_train", "codes_val")}
    layout = np.load(files["codes_layout"])
    folds = [te.encode_split(f, layout, "binary", 2)[0] for f in fold_splits(arrays, np.load(files["folds"]))]
    cols = te.model_columns(np.load(files["tree_columns"]), arrays["X_train"].shape[1], layout, [1] * len(layout))
    by_hand = gbt.train_and_score_gbt(folds, GBT, "binary", "roc_auc", 0, columns=cols)
    assert values["gbt", "target"] == pytest.approx(by_hand.value)
    assert values["gbt", "target"] != values["gbt", "onehot"] and values["mlp", "target"] != values["mlp", "onehot"]
    # The network's inputs: the value columns replaced by one encoding per column.
    replaced = int((layout[:, 1] - layout[:, 0]).sum())
    width = arrays["X_train"].shape[1] - replaced + len(layout)
    assert data_for(files, "binary", 2, None, "target")[0].X_train.shape[1] == width
    with pytest.raises(InvalidInput, match="category_encoding"):
        run_task({**_trial_req(books, spec, "enc-gbt-target", 0), "task_type": "binary", "n_classes": 2,
                  "metric": "roc_auc", "params": {**GBT, "category_encoding": "hashing"}}, LocalContext())
