"""Every shared dataset prepares with only its target given, and what preparation did to
each column is recorded with a reason (issue 7, "preparation that survives real files")."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.pipeline.helpers import arrays, prepare

# (file, target, task, encoding, {column: reason prefix} of columns that must be dropped,
#  {column: date format} of columns that must be read as dates)
CASES = [
    ("adult.csv", "class", "binary", "utf-8", {}, {}),
    ("bike_sharing_hour.csv", "count", "regression", "utf-8", {"instant": "row number"}, {"dateday": "%d-%m-%Y"}),
    ("book_banning.csv", "removed", "binary", "cp1252",
     {"rownames": "row number", "book_id": "identifier"}, {"date": "%Y-%m-%d"}),
    ("generic_polllist.csv", "adjusted_dem", "regression", "utf-8",
     {"rownames": "row number", "multiversions": "empty", "modeldate": "constant", "poll_id": "identifier",
      "question_id": "identifier"},
     {"startdate": "%Y-%m-%d", "enddate": "%Y-%m-%d", "createddate": "%Y-%m-%d"}),
    ("fertility.csv", "morekids", "binary", "utf-8", {"rownames": "row number"}, {}),
    ("insurance.csv", "charges", "regression", "utf-8", {}, {}),
    ("titanic.csv", "Survived", "binary", "utf-8",
     {"PassengerId": "row number", "Name": "identifier or free text"}, {}),
]
# Bound on the encoded width: one-hot is capped per column, so no file may explode it.
MAX_WIDTH = 400


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def case(request, tmp_path_factory) -> tuple[tuple, dict[str, Any]]:
    name, target = request.param[:2]
    return request.param, prepare(name, target, tmp_path_factory.mktemp(name.split(".")[0]))


def test_task_and_encoding_are_detected_and_recorded(case):
    (name, target, task, encoding, _, _), res = case
    assert res["profile"]["task"] == task and res["profile"]["target"] == target
    assert res["encoding"] == encoding and res["profile"]["encoding"] == encoding


def test_every_column_has_a_kind_and_every_drop_a_reason(case):
    (_, target, _, _, drops, _), res = case
    cols = {c["name"]: c for c in res["profile"]["columns"]}
    assert target not in cols
    for c in cols.values():
        assert c["kind"] in ("numeric", "categorical", "dropped")
        assert (c["kind"] == "dropped") == bool(c.get("reason")), c
    for col, reason in drops.items():
        assert cols[col]["kind"] == "dropped" and cols[col]["reason"].startswith(reason), cols[col]
    # The preprocessing JSON keeps the same record, so an artifact says what was left out.
    assert {d["name"] for d in res["preprocessing"]["dropped"]} == {n for n, c in cols.items() if c["kind"] == "dropped"}
    assert set(res["input_columns"]) == {n for n, c in cols.items() if c["kind"] != "dropped"}


def test_dates_become_numeric_calendar_parts(case):
    (_, _, _, _, _, dates), res = case
    cols = {c["name"]: c for c in res["profile"]["columns"]}
    names = res["feature_names"]
    for col, fmt in dates.items():
        assert cols[col]["kind"] == "numeric" and cols[col]["date_format"] == fmt
        assert col in names and f"{col}__month" in names and f"{col}__weekday" in names


def test_arrays_are_finite_and_bounded_in_width(case):
    _, res = case
    a = arrays(res)
    width = len(res["feature_names"])
    assert 0 < width <= MAX_WIDTH
    for part in ("train", "val", "test"):
        X, y = a[f"X_{part}"], a[f"y_{part}"]
        assert X.dtype == np.float32 and X.shape[1] == width and len(X) == len(y) > 0
        assert np.isfinite(X).all() and np.isfinite(y).all()
    # Calendar parts and piecewise-linear bins live in 0..1.
    for i, n in enumerate(res["feature_names"]):
        if "__bin" in n or "__" in n and n.rsplit("__", 1)[-1] in ("month", "day", "weekday", "dayofyear", "hour"):
            assert 0.0 <= a["X_train"][:, i].min() and a["X_train"][:, i].max() <= 1.0, n
