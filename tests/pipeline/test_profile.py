import numpy as np
import pandas as pd
import pytest

from nexus_node.errors import InvalidInput
from nexus_node.pipeline import csvio
from nexus_node.pipeline.profile import (
    detect_target,
    parse_dates,
    parse_numbers,
    profile_column,
    profile_columns,
    target_labels,
)
from tests.conftest import dataset


def _table(name: str) -> pd.DataFrame:
    return csvio.read_table(dataset(name))[0]


@pytest.mark.parametrize(
    "name, target, task, classes",
    [
        ("insurance.csv", "charges", "regression", ()),
        ("titanic.csv", "Survived", "binary", ("0", "1")),
        ("adult.csv", "class", "binary", ("<=50K", ">50K")),
        ("insurance.csv", "region", "multiclass", ("northeast", "northwest", "southeast", "southwest")),
        ("insurance.csv", "children", "multiclass", ("0", "1", "2", "3", "4", "5")),
    ],
)
def test_task_detection_on_real_data(name, target, task, classes):
    df = _table(name)
    info = detect_target(df[target].dropna(), target)
    assert (info.task, info.classes) == (task, classes)


def test_target_labels_follow_class_order():
    s = pd.Series(["1.0", "0", "1"], dtype="str")
    info = detect_target(s, "y")
    assert info.classes == ("0", "1")
    assert target_labels(s, info).tolist() == [1, 0, 1]


def test_constant_target_is_refused():
    with pytest.raises(InvalidInput, match="same value"):
        detect_target(pd.Series(["a"] * 20, dtype="str"), "y")


def test_too_many_text_classes_is_refused_with_advice():
    s = pd.Series([f"c{i}" for i in range(60)] * 2, dtype="str")
    with pytest.raises(InvalidInput, match="at most 50 classes"):
        detect_target(s, "y")


def test_many_numbers_are_regression_few_whole_numbers_are_classes():
    assert detect_target(pd.Series([str(i) for i in range(30)], dtype="str"), "y").task == "regression"
    assert detect_target(pd.Series([str(i % 7) for i in range(30)], dtype="str"), "y").task == "multiclass"
    assert detect_target(pd.Series([str(i % 7 + 0.5) for i in range(30)], dtype="str"), "y").task == "regression"


def _kinds(df: pd.DataFrame, target: str) -> dict[str, tuple[str, str | None]]:
    return {c.name: (c.kind, c.reason) for c in profile_columns(df, target, [])}


def test_titanic_drops_ids_and_free_text_and_keeps_the_rest():
    k = _kinds(_table("titanic.csv"), "Survived")
    assert k["PassengerId"][0] == "dropped" and "row number" in k["PassengerId"][1]
    assert k["Name"][0] == "dropped" and "every row" in k["Name"][1]
    # 681 tickets in 891 rows, but 39% of passengers share theirs with others: a key.
    assert k["Ticket"][0] == "categorical" and k["Cabin"][0] == "categorical"
    assert {n for n, (kind, _) in k.items() if kind != "dropped"} == {
        "Pclass", "Sex", "Age", "SibSp", "Parch", "Ticket", "Fare", "Cabin", "Embarked"}
    assert k["Sex"][0] == "categorical" and k["Age"][0] == "numeric"


def test_polllist_drops_empty_constant_and_id_columns_and_reads_dates():
    df = _table("generic_polllist.csv")
    cols = {c.name: c for c in profile_columns(df, "adjusted_dem", [])}
    assert cols["multiversions"].kind == "dropped" and cols["multiversions"].reason.startswith("empty")
    assert cols["modeldate"].kind == "dropped" and cols["modeldate"].reason.startswith("constant")
    assert cols["rownames"].reason.startswith("row number")
    assert cols["poll_id"].kind == "dropped" and "identifier" in cols["poll_id"].reason
    assert (cols["startdate"].kind, cols["startdate"].dtype, cols["startdate"].date_format) == ("numeric", "date", "%Y-%m-%d")
    # One value plus missing cells still tells rows apart: kept.
    assert cols["tracking"].kind == "categorical"
    assert cols["multiversions"].to_dict()["missing_fraction"] == 1.0


def test_drop_on_request_and_adult_missing_markers():
    df = _table("adult.csv")
    cols = {c.name: c for c in profile_columns(df, "class", ["fnlwgt"])}
    assert (cols["fnlwgt"].kind, cols["fnlwgt"].reason) == ("dropped", "dropped on request")
    assert cols["workclass"].missing_fraction == pytest.approx(1836 / 32561)
    assert cols["native-country"].kind == "categorical" and cols["native-country"].n_unique == 41


def test_numbers_with_a_stray_word_are_categorical_and_parsing_is_lenient():
    s = pd.Series(["1", "2", "x"] * 5, dtype="str")
    assert profile_column(s, "v", 15).kind == "categorical"
    assert np.isnan(parse_numbers(pd.Series(["1", "inf", "x", None], dtype="str"))[1:]).all()
    days = parse_dates(pd.Series(["1970-01-02", "bad"], dtype="str"), "%Y-%m-%d")
    assert days[0] == 1.0 and np.isnan(days[1])


def test_day_first_dates_are_recognised():
    cols = {c.name: c for c in profile_columns(_table("bike_sharing_hour.csv"), "count", [])}
    assert cols["dateday"].date_format == "%d-%m-%Y"
    assert cols["instant"].reason.startswith("row number")


def test_numbers_exported_as_text_are_parsed():
    s = pd.Series(["$1,234.50", "12%", "-3,000", "€ 5", "1e3", "1,2", "abc", None], dtype="str")
    got = parse_numbers(s)
    np.testing.assert_array_equal(got[:5], [1234.5, 12.0, -3000.0, 5.0, 1000.0])
    # A decimal comma or a word is not a number; "1,2" is not a thousands group.
    assert np.isnan(got[5:]).all()


def test_many_distinct_text_values_are_a_key_when_enough_cells_repeat():
    # 60 rows, 40 distinct values: free text by the distinct count alone (> 30 and > half).
    # Values 0-19 occur twice (40 of 60 cells repeat another), 20-39 once.
    shared = pd.Series([f"book {i}" for i in list(range(20)) * 2 + list(range(20, 40))], dtype="str")
    info = profile_column(shared, "title", 60)
    assert (info.kind, info.n_unique) == ("categorical", 40)
    # 55 distinct in 60 rows: 10 cells (17%) repeat, under MIN_REPEATED_SHARE: free text.
    prose = pd.Series([f"note {i}" for i in list(range(5)) * 2 + list(range(5, 55))], dtype="str")
    info = profile_column(prose, "comment", 60)
    assert info.kind == "dropped" and info.reason == "free text: 55 distinct values in 60 rows, 17% of them shared with another row"
