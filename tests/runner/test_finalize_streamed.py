"""finalize on rows larger than the runner's budget (issue 24): a network's fits stream their
rows from the prepared files, trees refit on the largest sample that fits and say so, every
test row is scored, and permutation importance past its row cap shuffles a seeded sample
while the test metrics still score every row, in one finalize or assembled from members."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest

from nexus_node.pipeline.artifact import load_artifact
from nexus_node.pipeline.result import scored_rows
from nexus_node.runner import arrays, finalize, memory
from nexus_node.runner.arrays import splits_for
from nexus_node.runner.context import LocalContext
from nexus_node.runner.tasks import run_task

MLP = {"family": "mlp", "n_layers": 2, "width": 32, "activation": "relu", "dropout": 0.0,
       "learning_rate": 3e-3, "weight_decay": 1e-5, "batch_size": 256, "epochs": 4}
GBT = {"family": "gbt", "learning_rate": 0.1, "max_iter": 40, "max_leaf_nodes": 15,
       "min_samples_leaf": 10, "l2_regularization": 0.1}
ROWS = 20_000


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A binary table with five numbers and a 300-valued city (a target-encoding choice)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 5))
    city = rng.integers(0, 300, ROWS)
    logit = x @ np.array([1.5, -1.0, 0.5, 0.0, 2.0]) + 4 * (rng.uniform(size=300)[city] - 0.5)
    label = np.where(logit + rng.logistic(size=ROWS) > 0, "yes", "no")
    lines = ["x0,x1,x2,x3,x4,city,label"] + [
        ",".join([*(f"{v:.4f}" for v in x[i]), f"c{city[i]}", label[i]]) for i in range(ROWS)]
    directory = tmp_path_factory.mktemp("streamed")
    (directory / "data.csv").write_text("\n".join(lines) + "\n")
    out = run_task({"task": "prepare", "csv_path": str(directory / "data.csv"), "target": "label", "seed": 0,
                    "drop_columns": [], "out_dir": str(directory / "prep")}, LocalContext())
    assert "codes_layout" in out["files"] and "folds" not in out["files"]
    return {**out, "csv": str(directory / "data.csv")}


@pytest.fixture(autouse=True)
def no_budget() -> Iterator[None]:
    yield
    memory.set_budget(0)
    for cache in (arrays._device_data, arrays._streamed, arrays._tree_rows):
        cache.clear()


def _req(prepared: dict[str, Any], path: Path, params: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"task": "finalize", "params": params, "trial": 0, "files": prepared["files"], "task_type": "binary",
            "n_classes": 2, "metric": "roc_auc", "seed": 0, "threads": 1, "epochs_hint": params.get("epochs", 40),
            "preprocessing": prepared["preprocessing"], "artifact_path": str(path), **extra}


def _split_rows(prepared: dict[str, Any]) -> dict[str, int]:
    return {s: int(prepared["split"][s]) for s in ("train", "val", "test")}


@pytest.mark.parametrize("encoding", ["onehot", "target"])
def test_a_network_s_fits_stream_past_the_budget_and_score_every_test_row(prepared, tmp_path, encoding):
    params = {**MLP, "category_encoding": encoding}
    held = run_task(_req(prepared, tmp_path / "held.zip", params), LocalContext())
    memory.set_budget(8)     # every split's rows take about 9 MB as the network reads them
    assert arrays.streams_final(prepared["files"], "binary", 2, encoding)
    streamed = run_task(_req(prepared, tmp_path / "streamed.zip", params), LocalContext())
    n = _split_rows(prepared)
    assert streamed["final_model_rows"] == sum(n.values()) and streamed["evaluated_model_rows"] == n["train"] + n["val"]
    assert streamed["test_rows"] == n["test"]
    # The same configuration, its rows in another order: the same quality, not the same bits.
    assert streamed["test_metrics"]["roc_auc"] > 0.8
    assert abs(streamed["test_metrics"]["roc_auc"] - held["test_metrics"]["roc_auc"]) < 0.02
    assert set(streamed["feature_importance"]) == set(held["feature_importance"])
    rows = pd.read_csv(prepared["csv"], dtype=str, nrows=50)
    out = load_artifact(str(tmp_path / "streamed.zip")).predict(rows.drop(columns="label"))
    assert len(out["predictions"]) == 50 and out["classes"] == ["no", "yes"]


def test_trees_refit_on_the_largest_sample_that_fits_and_say_how_many_rows(prepared, tmp_path):
    memory.set_budget(8)
    out = run_task(_req(prepared, tmp_path / "trees.zip", GBT), LocalContext())
    n = _split_rows(prepared)
    # Both fits sample as many rows as the room holds: fewer than either fit's rows.
    assert 1000 <= out["evaluated_model_rows"] == out["final_model_rows"] < n["train"] + n["val"]
    assert f"trees refitted on {out['final_model_rows']} sampled rows of {sum(n.values())}" in out["note"]
    assert out["test_metrics"]["roc_auc"] > 0.8


def _library(prepared: dict[str, Any], tmp_path: Path) -> list[dict[str, Any]]:
    """Two trials whose validation predictions err independently: selection averages them."""
    y = scored_rows(splits_for(prepared["files"]))
    rng = np.random.default_rng(3)
    library = []
    for trial, params in enumerate([GBT, MLP]):
        noisy = np.clip(np.eye(2)[y] + rng.normal(scale=0.4, size=(y.size, 2)), 0.01, None)
        path = tmp_path / f"trial{trial}.npy"
        np.save(path, (noisy / noisy.sum(axis=1, keepdims=True)).astype(np.float32), allow_pickle=False)
        library.append({"trial": trial, "params": params, "epochs": 4 if trial else 40, "predictions_path": str(path)})
    return library


def test_importance_past_its_row_cap_shuffles_a_sample_and_the_metrics_score_every_row(prepared, tmp_path,
                                                                                        monkeypatch):
    library = _library(prepared, tmp_path)
    every = run_task(_req(prepared, tmp_path / "every.zip", GBT, library=library), LocalContext())
    assert len(every["members"]) == 2
    monkeypatch.setattr(finalize, "IMPORTANCE_ROWS", 500)
    sampled = run_task(_req(prepared, tmp_path / "sampled.zip", GBT, library=library), LocalContext())
    assert sampled["test_metrics"] == every["test_metrics"]          # the same models on every test row
    assert set(sampled["feature_importance"]) == set(every["feature_importance"])
    assert sampled["feature_importance"] != every["feature_importance"]   # shuffles of 500 rows, not all
    # Members refitted apart (as on several nodes) carry every row's predictions beside the
    # sample's shuffles, and assemble into the same result.
    base = _req(prepared, tmp_path / "x.zip", GBT)
    picked = run_task({**base, "task": "select", "library": library}, LocalContext())
    chosen = []
    for i, c in enumerate(picked["chosen"]):
        path = tmp_path / f"member{i}.zip"
        run_task({**base, "task": "refit", "candidate": c["candidate"], "weight": c["weight"],
                  "artifact_path": str(path)}, LocalContext())
        chosen.append({**c, "candidate": {**c["candidate"], "member_path": str(path)}})
    apart = run_task({**base, "artifact_path": str(tmp_path / "apart.zip"), "chosen": chosen,
                      "selection": picked["selection"]}, LocalContext())
    for name, value in sampled["test_metrics"].items():
        assert apart["test_metrics"][name] == pytest.approx(value, rel=1e-6), name
    for name, value in sampled["feature_importance"].items():
        assert apart["feature_importance"][name] == pytest.approx(value, rel=1e-6, abs=1e-9), name


def test_trees_without_room_for_a_final_refit_keep_the_evaluated_model(prepared, tmp_path, monkeypatch):
    memory.set_budget(8)
    rooms = iter([8 << 20, 8 << 20, 64 << 10])    # decide, the evaluated fit, then the final fit
    monkeypatch.setattr(memory, "room", lambda: next(rooms))
    out = run_task(_req(prepared, tmp_path / "kept.zip", GBT), LocalContext())
    assert "no room left for a final refit of the trees" in out["note"] and "kept the evaluated model" in out["note"]
    assert out["final_model_rows"] == out["evaluated_model_rows"] >= 1000
    assert load_artifact(str(tmp_path / "kept.zip")).config["family"] == "gbt"
