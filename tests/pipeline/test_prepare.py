import json

import numpy as np
import pandas as pd
import pytest

from nexus_node.errors import InvalidInput
from nexus_node.pipeline import csvio
from nexus_node.pipeline.prepare import (
    ARRAY_NAMES,
    fit_preprocessing,
    piecewise_linear,
    prepare,
    split_indices,
    transform,
)
from nexus_node.pipeline.profile import detect_target, profile_columns
from tests.conftest import dataset
from tests.pipeline.helpers import arrays, write_csv

ROWS = "".join(f"{i % 7},{'ab'[i % 2]},{i * 1.5}\n" for i in range(30))


def _prepare(tmp_path, text, target="y", **kw):
    return prepare(str(write_csv(tmp_path, text)), target, 0, str(tmp_path / "out"), **kw)


@pytest.mark.parametrize(
    "text, kw, needle",
    [
        ("a,b,y\n" + ROWS, {"target": "price"}, r"target column 'price' is not in the CSV; available columns: \['a', 'b', 'y'\]"),
        ("a,b,y\n" + "".join(f"{i},x,\n" for i in range(20)), {}, "has no values"),
        ("a,b,y\n1,x,3\n", {}, "only 1 row"),
        ("a,b,y\n" + "".join(f"{i},x,{i}\n" for i in range(9)), {}, "only 9 row"),
        ("a,b,y\n", {}, "no data rows"),
        ("a,b,y\n" + ROWS, {"drop_columns": ["zzz"]}, r"columns to drop \['zzz'\] are not in the CSV"),
        ("a,b,y\n" + ROWS, {"drop_columns": ["y"]}, "cannot also be dropped"),
        ("y\n" + "".join(f"{i}\n" for i in range(30)), {}, "no usable feature columns"),
        ("a,b,y\n" + "".join(f"{i},x,7\n" for i in range(30)), {}, "same value"),
        ("a;b;y\n" + ROWS.replace(",", ";"), {"target": "a,b,y"}, "not in the CSV"),
    ],
)
def test_bad_input_raises_invalid_input_that_says_what_to_fix(tmp_path, text, kw, needle):
    with pytest.raises(InvalidInput, match=needle):
        _prepare(tmp_path, text, **kw)


def test_single_column_file_hints_at_the_delimiter(tmp_path):
    with pytest.raises(InvalidInput, match="single column"):
        _prepare(tmp_path, "a b y\n" + "1 2 3\n" * 20, target="y")


def test_insurance_result_shape_and_files(insurance):
    p = insurance["profile"]
    assert (p["rows"], p["task"], p["target"], p["rows_dropped_missing_target"]) == (1338, "regression", "charges", 0)
    assert insurance["encoding"] == "utf-8"
    assert insurance["input_columns"] == ["age", "sex", "bmi", "children", "smoker", "region"]
    names = insurance["feature_names"]
    assert p["n_features"] == len(names)
    # Numbers: the value and its piecewise-linear bins; categories: one column each.
    assert names[:2] == ["age", "age__bin0"] and "smoker=yes" in names and "bmi__bin15" in names
    assert not any(n.startswith("children__bin") and int(n[13:]) > 4 for n in names)   # 6 values, few bins
    split = insurance["split"]
    assert split["train"] + split["val"] + split["test"] == 1338 and split["seed"] == 0
    a = arrays(insurance)
    assert set(a) == set(ARRAY_NAMES) | {"tree_columns", "folds"}   # 1,338 rows: cross-validated
    assert a["X_train"].dtype == np.float32 and a["X_train"].shape == (split["train"], len(names))
    assert a["y_train"].dtype == np.float64
    # The regression target stays in original units; its scaling is in the preprocessing.
    t = insurance["preprocessing"]["target"]["transform"]
    assert abs(a["y_train"].mean() - t["mean"]) < 1e-6 and t["std"] > 1000
    json.dumps(insurance)   # the whole result is JSON-able


def test_rows_with_missing_target_are_dropped_and_counted(tmp_path):
    text = "a,b,y\n" + ROWS + "1,a,\n2,b,?\n"
    out = _prepare(tmp_path, text)
    assert out["profile"]["rows"] == 30 and out["profile"]["rows_dropped_missing_target"] == 2


def test_classification_split_is_stratified_and_labels_are_encoded(titanic):
    a = arrays(titanic)
    assert titanic["profile"]["classes"] == ["0", "1"]
    rates = [a[f"y_{s}"].mean() for s in ("train", "val", "test")]
    assert a["y_train"].dtype == np.int64 and max(rates) - min(rates) < 0.01
    dropped = {c["name"]: c["reason"] for c in titanic["profile"]["columns"] if c["kind"] == "dropped"}
    assert set(dropped) == {"PassengerId", "Name"}
    assert {d["name"] for d in titanic["preprocessing"]["dropped"]} == set(dropped)


def test_split_is_deterministic_disjoint_and_complete():
    labels = np.array([0] * 50 + [1] * 10 + [2] * 1)
    a = split_indices(61, 5, 0.2, 0.2, labels)
    b = split_indices(61, 5, 0.2, 0.2, labels)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert sorted(np.concatenate(a).tolist()) == list(range(61))
    assert [np.sum(labels[a[2]] == c) for c in (0, 1, 2)] == [10, 2, 0]   # the lone row trains
    c = split_indices(61, 6, 0.2, 0.2, labels)
    assert not np.array_equal(a[2], c[2])


def _fit(name: str, target: str):
    df = csvio.read_table(dataset(name))[0]
    df = df[df[target].notna()].reset_index(drop=True)
    info = detect_target(df[target], target)
    return df, fit_preprocessing(df, profile_columns(df, target, []), info)


def test_preprocessing_round_trips_through_json_and_transforms_identically():
    df, prep = _fit("titanic.csv", "Survived")
    again = json.loads(json.dumps(prep))
    assert again == prep
    assert np.array_equal(transform(df, prep), transform(df, again))
    # A reordered frame with extra columns encodes the same rows the same way.
    shuffled = df.iloc[::-1].assign(extra="x")[list(reversed(df.columns)) + ["extra"]]
    assert np.array_equal(transform(shuffled, again)[::-1], transform(df, prep))


def test_transform_of_new_rows_handles_unseen_missing_and_bad_values():
    df, prep = _fit("titanic.csv", "Survived")
    new = pd.DataFrame({c: pd.Series([pd.NA, pd.NA], dtype="str") for c in df.columns})
    new.loc[0, "Sex"], new.loc[0, "Age"], new.loc[0, "Embarked"] = "unknown", "not a number", "Z"
    X = transform(new, prep)
    names = prep["feature_names"]
    age = names.index("Age")
    spec = next(s for s in prep["columns"] if s["name"] == "Age")
    assert X[0, age] == pytest.approx((spec["median"] - spec["mean"]) / spec["std"])
    assert X[0, names.index("Age__missing")] == 1.0
    # Training saw no rare Sex values, so an unseen one sets no Sex column at all.
    assert X[0, [i for i, n in enumerate(names) if n.startswith("Sex=")]].sum() == 0
    assert X[1, names.index("Embarked=__missing__")] == 1.0
    assert np.isfinite(X).all()


def test_categories_are_bounded_by_frequency_with_an_other_column():
    df, prep = _fit("adult.csv", "class")
    spec = next(s for s in prep["columns"] if s["name"] == "native-country")
    assert len(spec["categories"]) == 30 and spec["other"] and spec["missing"]
    assert spec["categories"][0] == "United-States"
    start, stop = spec["features"]
    assert stop - start == 33   # 30 values, other, missing, and the count (41 values > 30)
    assert prep["feature_names"][stop - 1] == "native-country__count"
    X = transform(df.iloc[:200], prep)
    assert np.array_equal(X[:, start:stop - 1].sum(axis=1), np.ones(200, dtype=np.float32))


def test_missing_training_column_is_named():
    df, prep = _fit("insurance.csv", "charges")
    with pytest.raises(InvalidInput, match=r"missing column\(s\) \['smoker'\]"):
        transform(df.drop(columns=["smoker"]), prep)


def test_skewed_nonnegative_feature_is_log_scaled():
    _, prep = _fit("adult.csv", "class")
    by_name = {s["name"]: s for s in prep["columns"]}
    assert by_name["capital-gain"]["log"] and not by_name["age"]["log"]


def test_piecewise_linear_encoding_climbs_through_each_bin():
    enc = piecewise_linear(np.array([-1.0, 0.0, 1.5, 3.0, 9.0]), [0.0, 1.0, 2.0, 3.0])
    assert enc.tolist() == [[0, 0, 0], [0, 0, 0], [1, 0.5, 0], [1, 1, 1], [1, 1, 1]]


def test_high_cardinality_categories_get_a_count_of_other_training_rows(tmp_path):
    # 40 titles (more than the one-hot's 30) in 53 rows: t0 in 5 rows, t1..t9 in 2, t10..t39 in 1.
    titles = ["t0"] * 5 + [f"t{i}" for i in range(1, 10) for _ in range(2)] + [f"t{i}" for i in range(10, 40)]
    train = pd.DataFrame({"title": pd.Series(titles, dtype="str"),
                          "shelf": pd.Series((["a", "b", "c"] * 18)[:53], dtype="str"),
                          "y": pd.Series((["0", "1"] * 27)[:53], dtype="str")})
    prep = fit_preprocessing(train, profile_columns(train, "y", []), detect_target(train["y"], "y"))
    names = prep["feature_names"]
    assert "title__count" in names and not any(n.startswith("shelf__") for n in names)   # 3 values: one-hot only
    col = names.index("title__count")
    # The rows it was fitted on count the *other* rows with their value ...
    fitted = transform(train, prep, fitted_rows=True)[:, col]
    assert np.allclose(fitted[[0, 5, 23]], np.log1p([4, 1, 0]))
    # ... as new rows count the training rows with theirs; unseen and missing values count 0.
    new = pd.DataFrame({"title": pd.Series(["t0", "t1", "t30", "never seen", pd.NA], dtype="str"),
                        "shelf": pd.Series(["a"] * 5, dtype="str")})
    assert np.allclose(transform(new, prep)[:, col], np.log1p([5, 2, 1, 0, 0]))
    assert np.allclose(transform(new, json.loads(json.dumps(prep)))[:, col], np.log1p([5, 2, 1, 0, 0]))
    # prepare writes the training split's rows with the fitted-rows count, the others with
    # the training split's count.
    big = pd.DataFrame({"title": [f"t{i % 80}" for i in range(200)], "y": [str(i % 3 % 2) for i in range(200)]})
    res = prepare(str(write_csv(tmp_path, big.to_csv(index=False))), "y", 0, str(tmp_path / "out"))
    a = arrays(res)
    col = res["feature_names"].index("title__count")
    train_idx, val_idx, _ = split_indices(200, 0, 0.2, 0.2, big["y"].astype(int).to_numpy())
    in_train = big["title"].iloc[train_idx].value_counts()
    assert np.allclose(a["X_train"][:, col], np.log1p(big["title"].iloc[train_idx].map(in_train) - 1))
    assert np.allclose(a["X_val"][:, col], np.log1p(big["title"].iloc[val_idx].map(in_train).fillna(0)))
