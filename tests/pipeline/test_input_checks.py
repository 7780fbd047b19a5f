"""Serving's checks of the rows it predicts (pipeline/input_checks.py): text in a number
column is refused by name, values outside the training range, unseen categories and empty
rows are reported by row and counted."""

from __future__ import annotations

import pandas as pd
import pytest

from nexus_node.errors import InvalidInput
from nexus_node.pipeline.input_checks import check_numbers, empty_rows, outside_range, unseen_categories, warning_counts
from nexus_node.pipeline.prepare import fit_categorical, fit_numeric
from nexus_node.pipeline.profile import parse_numbers


def _prep(train: pd.DataFrame) -> dict:
    specs = [fit_numeric(c, parse_numbers(train[c]), None) for c in train.columns]
    return {"columns": specs + [{"name": "city", "kind": "categorical"}]}


def _frame(**cols) -> pd.DataFrame:
    return pd.DataFrame({k: pd.array(v, dtype="str") for k, v in cols.items()})


TRAIN = _frame(age=["20", "35", "61", None], price=["$1,000", "2000", "1500", "900"])


def test_text_in_a_number_column_is_refused_with_its_column_row_and_value():
    rows = _frame(age=["30", "old", "martian"], price=["1", "2", "3"], city=["x", "y", "z"])
    with pytest.raises(InvalidInput, match=r"column 'age' holds 'old' in row 2 \(and 1 more rows\)"):
        check_numbers(rows, _prep(TRAIN))


@pytest.mark.parametrize("cell", ["inf", "-inf", "1e999"])
def test_an_infinite_number_is_refused(cell):
    with pytest.raises(InvalidInput, match="'price'.*not a finite number"):
        check_numbers(_frame(age=["30"], price=[cell], city=["x"]), _prep(TRAIN))


def test_missing_cells_and_decorated_numbers_are_accepted():
    check_numbers(_frame(age=[None, "40"], price=["$1,200", None], city=["x", None]), _prep(TRAIN))


def test_words_training_read_as_missing_are_missing_at_prediction_too():
    from nexus_node.pipeline.prepare import fit_preprocessing
    from nexus_node.pipeline.profile import ColumnInfo, TargetInfo

    train = _frame(age=["20", "unknown", "35", "-", "61"], y=["1", "2", "3", "4", "5"])
    cols = [ColumnInfo(name="age", kind="numeric", dtype="int64", missing_fraction=0.4, n_unique=3, stats={})]
    prep = fit_preprocessing(train, cols, TargetInfo(name="y", task="regression", numeric=True))
    assert prep["columns"][0]["missing_words"] == ["-", "unknown"]
    check_numbers(_frame(age=["unknown", "-", "40"]), prep)
    with pytest.raises(InvalidInput, match="'age' holds 'n/k'"):
        check_numbers(_frame(age=["n/k"]), prep)


def test_rows_outside_the_training_range_are_named_by_column():
    rows = _frame(age=["20", "19", "62", None], price=["900", "2,000", "$5,000", "899.5"], city=["a"] * 4)
    assert outside_range(rows, _prep(TRAIN)) == [(), ("age",), ("age", "price"), ("price",)]


def test_the_training_rows_themselves_are_inside():
    assert outside_range(TRAIN.assign(city="a"), _prep(TRAIN)) == [()] * len(TRAIN)


def test_a_log_scaled_column_keeps_its_range_in_raw_units():
    skewed = _frame(n=["1", "1", "2", "2", "3", "5", "8", "400"])
    spec = fit_numeric("n", parse_numbers(skewed["n"]), None)
    assert spec["log"] and spec["range"] == [1.0, 400.0]


def test_preprocessing_from_before_ranges_reports_nothing():
    prep = _prep(TRAIN)
    for spec in prep["columns"]:
        spec.pop("range", None)
    assert outside_range(_frame(age=["999"], price=["1"], city=["a"]), prep) == [()]


def test_unseen_categories_are_named_by_row_and_counted_with_the_empty_rows():
    train = _frame(age=["20", "35", "61", "40"], city=["paris", "paris", "rome", "rome"])
    prep = {"columns": [fit_numeric("age", parse_numbers(train["age"]), None), fit_categorical("city", train["city"])]}
    rows = _frame(age=["30", "30", None, "", "50"], city=["rome", "mars", None, None, "venus"])
    unseen = unseen_categories(rows, prep)
    assert unseen == [(), ("city",), (), (), ("city",)]
    empty = empty_rows(rows, prep)
    assert empty.tolist() == [False, False, True, True, False]
    assert warning_counts(unseen, empty) == {
        "rows": 5, "unseen_category_rows": 2, "unseen_categories": {"city": 2}, "empty_rows": 2}


def test_a_counted_value_of_a_many_valued_column_is_not_unseen_and_missing_words_are_empty():
    from nexus_node.pipeline.profile import CATEGORY_LIMIT

    # Each value twice, so that one-hot keeps the most frequent and the rest are only counted.
    values = [f"v{i}" for i in range(CATEGORY_LIMIT + 5)] * 2
    spec = fit_categorical("code", _frame(code=values)["code"])
    counted_only = next(v for v in spec["counts"] if v not in spec["categories"])
    age = fit_numeric("age", parse_numbers(TRAIN["age"]), None)
    age["missing_words"] = ["unknown"]
    prep = {"columns": [age, spec]}
    rows = _frame(age=["30", "unknown"], code=[counted_only, None])
    assert unseen_categories(rows, prep) == [(), ()]
    assert unseen_categories(_frame(age=["30"], code=["never"]), prep) == [("code",)]
    assert empty_rows(rows, prep).tolist() == [False, True]
