"""Target encoding of high-cardinality categorical columns: the encoder itself (no row
encodes itself, unseen values get the prior, deterministic), and finalize's model serving
with the mappings it stored."""

from __future__ import annotations

import json
import zipfile
from typing import Any

import numpy as np
import pandas as pd
import pytest

from nexus_node.pipeline import csvio
from nexus_node.pipeline import target_encoding as te
from nexus_node.pipeline.artifact import load_artifact
from nexus_node.pipeline.importance import permuted_inputs
from nexus_node.pipeline.prepare import category_codes, split_indices, transform
from nexus_node.pipeline.profile import detect_target, target_labels
from nexus_node.runner.context import LocalContext
from nexus_node.runner.tasks import run_task
from nexus_node.study.constraints import CATEGORY_ENCODINGS, heuristic_constraints
from tests.conftest import dataset
from tests.pipeline.helpers import prepare

GBT = {"family": "gbt", "learning_rate": 0.1, "max_iter": 40, "max_leaf_nodes": 15,
       "min_samples_leaf": 10, "l2_regularization": 0.1}


def _rows(n: int = 400, values: int = 30, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    codes = rng.integers(-1, values, size=n)
    rate = rng.uniform(size=values)
    y = (rng.uniform(size=n) < np.where(codes >= 0, rate[np.maximum(codes, 0)], 0.5)).astype(np.int64)
    return codes, y


def test_the_m_estimate_shrinks_a_value_toward_the_prior_by_its_row_count():
    codes = np.array([0, 0, 0, 1, -1])
    t = np.array([[1.0], [1.0], [0.0], [1.0], [0.0]])
    table = te.fit_table(codes, t, 3, m=2.0)
    prior = 3 / 5
    np.testing.assert_allclose(table.prior, [prior])
    np.testing.assert_allclose(table.rows[:, 0], [(2 + 2 * prior) / (3 + 2), (1 + 2 * prior) / (1 + 2), prior])
    np.testing.assert_allclose(table.counts, [3, 1, 0])


def test_a_row_never_encodes_itself():
    codes, y = _rows()
    t = te.target_columns(y, "binary", 2)
    encoded = te.cross_fit(codes, t, 30)
    for i in range(0, len(y), 7):
        flipped = t.copy()
        flipped[i] = 1.0 - flipped[i]
        again = te.cross_fit(codes, flipped, 30)
        assert again[i] == encoded[i], i              # its own target changed, its encoding did not
    # ...while the mapping fitted on every row (for other rows) does move with it.
    assert not np.array_equal(te.fit_table(codes, flipped, 30).rows, te.fit_table(codes, t, 30).rows)


def test_unseen_and_missing_values_get_the_prior():
    codes, y = _rows()
    table = te.fit_table(codes, te.target_columns(y, "binary", 2), 30)
    out = te.lookup(np.array([-1, 30, 10_000, 3]), table)
    np.testing.assert_allclose(out[:3], np.tile(table.prior, (3, 1)))
    np.testing.assert_allclose(out[3], table.rows[3])
    # A value only the other rows hold: a fit without it gives it the prior too.
    no_three = te.fit_table(codes[codes != 3], te.target_columns(y[codes != 3], "binary", 2), 30)
    np.testing.assert_allclose(te.lookup(np.array([3]), no_three)[0], no_three.prior)


def test_the_encoding_is_deterministic_and_per_class_for_multiclass():
    rng = np.random.default_rng(0)
    codes, y = rng.integers(0, 20, 300), rng.integers(0, 3, 300)
    t = te.target_columns(y, "multiclass", 3)
    first, second = te.cross_fit(codes, t, 20), te.cross_fit(codes, t, 20)
    np.testing.assert_array_equal(first, second)
    assert first.shape == (300, 3)
    np.testing.assert_allclose(first.sum(axis=1), 1.0)     # class rates, smoothed alike
    assert te.width("multiclass", 3) == 3 and te.width("binary", 2) == 1 and te.width("regression", 0) == 1
    assert te.target_columns(np.array([0, 1, 1]), "binary", 2)[:, 0].tolist() == [0.0, 1.0, 1.0]


def test_assemble_replaces_the_value_columns_and_model_columns_follow():
    X = np.arange(24, dtype=np.float32).reshape(2, 12)
    layout = np.array([[2, 5, 9], [7, 9, 4]])                 # two columns' value features
    enc = [np.array([[0.1], [0.2]]), np.array([[0.3], [0.4]])]
    out = te.assemble(X, layout, enc)
    kept = [0, 1, 5, 6, 9, 10, 11]
    np.testing.assert_array_equal(out[:, :7], X[:, kept])
    np.testing.assert_allclose(out[:, 7:], [[0.1, 0.3], [0.2, 0.4]])
    cols = te.model_columns(np.array([0, 3, 5, 10]), 12, layout, [1, 1])
    assert cols.tolist() == [0, 2, 5, 7, 8]               # 3 was replaced; the encodings join


def test_importance_shuffles_a_columns_codes_with_its_block():
    prep = {"columns": [{"name": "a", "features": [0, 2]}, {"name": "b", "features": [2, 3]}]}
    X = np.arange(40, dtype=np.float32).reshape(10, 4)        # column 3: b's codes
    plain = list(permuted_inputs(X[:, :3], prep, 0))
    linked = list(permuted_inputs(X, prep, 0, linked={"b": [3]}))
    for p, q in zip(plain, linked):
        np.testing.assert_array_equal(p, q[:, :3])             # the same shuffles as before
    for q in linked[4:]:                                       # b's shuffles move its codes alike
        np.testing.assert_array_equal((q[:, 2] - 2) / 4, (q[:, 3] - 3) / 4)
        assert not np.array_equal(q[:, 3], X[:, 3])
    for q in linked[1:4]:
        np.testing.assert_array_equal(q[:, 3], X[:, 3])        # a's shuffles leave b's codes


def test_cross_validation_folds_carry_each_rows_codes():
    from nexus_node.pipeline.folds import fold_splits

    ids = np.arange(20)
    arrays = {"X_train": ids[:15, None].astype(np.float32), "y_train": ids[:15], "codes_train": ids[:15, None],
              "X_val": ids[15:, None].astype(np.float32), "y_val": ids[15:], "codes_val": ids[15:, None]}
    folds = fold_splits(arrays, np.arange(20) % 4)
    assert len(folds) == 4
    for f in folds:
        for part in ("train", "val"):
            np.testing.assert_array_equal(f[f"X_{part}"][:, 0], f[f"codes_{part}"][:, 0])
        assert sorted(f["y_train"].tolist() + f["y_val"].tolist()) == ids.tolist()


@pytest.fixture(scope="module")
def books(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return prepare("book_banning.csv", "removed", tmp_path_factory.mktemp("books"), drop_columns=["rownames"])


def test_prepare_writes_codes_and_offers_the_choice(books):
    prep = books["preprocessing"]
    names = [s["name"] for s in te.encoded_specs(prep)]
    assert books["profile"]["high_cardinality"] == names and "title" in names
    layout = np.load(books["files"]["codes_layout"])
    assert layout.shape == (len(names), 3)
    codes = np.load(books["files"]["codes_train"])
    assert codes.shape == (books["split"]["train"], len(names)) and codes.max() < layout[:, 2].max()
    assert heuristic_constraints(books["profile"], 8 << 30).category_encodings == CATEGORY_ENCODINGS
    assert heuristic_constraints({**books["profile"], "high_cardinality": []}, 8 << 30).category_encodings == ()


def _book_rows() -> tuple[pd.DataFrame, np.ndarray]:
    df, _ = csvio.read_table(dataset("book_banning.csv"))
    return df, target_labels(df["removed"], detect_target(df["removed"], "removed"))


@pytest.mark.parametrize("family", ["gbt", "mlp"])
def test_finalize_stores_the_final_rows_mapping_and_serves_with_it(books, tmp_path, family):
    params = ({**GBT, "category_encoding": "target"} if family == "gbt" else
              {"family": "mlp", "category_encoding": "target", "n_layers": 2, "width": 32, "activation": "relu",
               "dropout": 0.0, "learning_rate": 3e-3, "weight_decay": 1e-5, "batch_size": 64, "epochs": 5})
    path = tmp_path / "model.zip"
    res = run_task({"task": "finalize", "params": params, "files": books["files"], "task_type": "binary",
                    "n_classes": 2, "metric": "roc_auc", "seed": 0, "threads": 1, "epochs_hint": 20,
                    "preprocessing": books["preprocessing"], "artifact_path": str(path)}, LocalContext())
    assert res["test_metrics"]["roc_auc"] > 0.6 and "title" in res["feature_importance"]
    mapping = {c["name"]: c for c in json.loads(zipfile.ZipFile(path).read("config.json"))[te.CONFIG_KEY]}
    # The served model trained on every row: its mapping is every row's m-estimate.
    df, y = _book_rows()
    title = mapping["title"]
    prior = y.mean()
    assert title["prior"] == pytest.approx([prior])
    by_value = pd.Series(y).groupby(df["title"].to_numpy()).agg(["sum", "count"])
    for value in title["values"][:25]:
        s, n = by_value.loc[value]
        assert title["encodings"][title["values"].index(value)] == pytest.approx([(s + te.SMOOTHING * prior) / (n + te.SMOOTHING)])
    # Serving reads the stored mapping: make one value's encoding extreme and its rows move.
    predictor = load_artifact(str(path))
    common = df["title"].value_counts().index[0]
    rows = df[df["title"] == common].iloc[:5]
    before = np.array([p["probabilities"][1] for p in predictor.predict(rows)["predictions"]])
    doc = json.loads(zipfile.ZipFile(path).read("config.json"))
    col = next(c for c in doc[te.CONFIG_KEY] if c["name"] == "title")
    at = col["values"].index(common)
    col["encodings"][at] = [-10.0 if col["encodings"][at][0] > col["prior"][0] else 10.0]   # past every split
    with zipfile.ZipFile(path) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    parts["config.json"] = json.dumps(doc).encode()
    edited = tmp_path / "edited.zip"
    with zipfile.ZipFile(edited, "w") as z:
        for n, data in parts.items():
            z.writestr(n, data)
    after = np.array([p["probabilities"][1] for p in load_artifact(str(edited)).predict(rows)["predictions"]])
    assert not np.allclose(before, after)
    # New values predict (as the prior), two different unseen titles alike.
    new = rows.iloc[:1].copy()
    one, two = new.assign(title="a title nobody wrote"), new.assign(title="another unknown title")
    p1, p2 = (predictor.predict(r)["predictions"][0]["probabilities"] for r in (one, two))
    assert p1 == pytest.approx(p2) and 0.0 < p1[1] < 1.0


def test_finalize_scores_the_test_rows_with_the_train_and_validation_mapping(books, tmp_path):
    """The evaluated model's test predictions come from the mapping fitted on train+val
    rows alone: recomputed here from the raw table, they give the reported metric."""
    from nexus_node.pipeline import gbt, metrics

    files, prep = books["files"], books["preprocessing"]
    res = run_task({"task": "finalize", "params": {**GBT, "category_encoding": "target"}, "files": files,
                    "task_type": "binary", "n_classes": 2, "metric": "roc_auc", "seed": 0, "threads": 1,
                    "epochs_hint": 20, "preprocessing": prep, "artifact_path": str(tmp_path / "m.zip")},
                   LocalContext())
    df, y = _book_rows()
    df = df.drop(columns=["rownames"])
    train, val, test = split_indices(len(df), 0, 0.2, 0.2, y)
    fit = np.concatenate([train, val])
    layout = te.layout_of(prep)
    X_fit = np.concatenate([transform(df.iloc[train], prep, fitted_rows=True), transform(df.iloc[val], prep)])
    X_enc, tables = te.fit_rows(X_fit, category_codes(df.iloc[fit], prep), te.target_columns(y[fit], "binary", 2), layout)
    X_test = te.apply(transform(df.iloc[test], prep), category_codes(df.iloc[test], prep), tables, layout)
    cols = te.model_columns(np.load(files["tree_columns"]), X_fit.shape[1], layout, [1] * layout.shape[0])
    model = gbt.fit_gbt(X_enc[:, cols], y[fit], GBT, "binary", 20, 0)
    auc = metrics.score("roc_auc", y[test], model.predict_proba(X_test[:, cols]))
    assert res["test_metrics"]["roc_auc"] == pytest.approx(auc, abs=1e-9)
