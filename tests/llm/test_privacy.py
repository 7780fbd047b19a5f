"""What leaves the cluster: metadata only, never rows or values of text/id columns."""

from __future__ import annotations

import csv
import json

from nexus_node.llm import dataset_metadata, decide_constraints, summarize
from nexus_node.llm.privacy import MIN_LABEL_COUNT, looks_personal
from tests.conftest import dataset


def titanic_values(column: str) -> set[str]:
    with open(dataset("titanic.csv"), newline="") as f:
        return {row[column] for row in csv.DictReader(f) if row[column]}


def test_names_that_look_personal():
    for name in ("PassengerId", "customer_id", "Name", "E-mail", "Ticket", "rownames", "Unnamed: 0", "firstName"):
        assert looks_personal(name), name
    for name in ("age", "region", "smoker", "Fare", "Pclass", "bmi", "Embarked", "Cabin"):
        assert not looks_personal(name), name


def test_titanic_metadata_keeps_statistics_and_withholds_text_and_ids(titanic_profile):
    meta = dataset_metadata(titanic_profile)
    text = json.dumps(meta)
    cols = {c["name"]: c for c in meta["columns"]}
    assert meta["rows"] == 891 and meta["task"] == "binary"
    assert cols["Age"]["stats"]["max"] == 80.0 and 0.19 < cols["Age"]["missing_fraction"] < 0.2
    assert cols["Sex"]["top_categories"] == [["male", 0.6476], ["female", 0.3524]]
    for dropped in ("Name", "PassengerId"):
        assert "stats" not in cols[dropped] and "top_categories" not in cols[dropped]
    # Tickets and cabins are kept as keys shared by groups of passengers: the ticket's name
    # withholds its values, and no cabin is shared by enough passengers to be quoted.
    assert "values_withheld" in cols["Ticket"] and "top_categories" not in cols["Ticket"]
    assert cols["Cabin"]["kind"] == "categorical" and cols["Cabin"]["top_categories"] == []
    for column in ("Name", "Ticket", "Cabin"):
        leaked = [v for v in titanic_values(column) if len(v) > 3 and v in text]
        assert not leaked, f"{column} values in the metadata: {leaked[:3]}"


def test_rare_or_long_labels_and_constant_reasons_are_withheld():
    profile = {
        "rows": 100, "task": "regression", "n_features": 3, "target": "y",
        "target_column": {"name": "y", "dtype": "float64", "stats": {"min": 0, "max": 1, "mean": 0.5, "std": 0.1, "median": 0.5}},
        "columns": [
            {"name": "plan", "dtype": "str", "kind": "categorical", "missing_fraction": 0.0, "n_unique": 3,
             "stats": {"top": [["gold", 60], ["a description far longer than thirty-two chars", 36], ["Jane Q. Smith", MIN_LABEL_COUNT - 1]]}},
            {"name": "site", "dtype": "str", "kind": "dropped", "missing_fraction": 0.0, "n_unique": 1,
             "reason": "constant: every row is 'Secret Lab 7'", "stats": {}},
            {"name": "signup", "dtype": "date", "kind": "numeric", "missing_fraction": 0.0, "n_unique": 90,
             "stats": {"min": 18000.0, "max": 18365.0, "first": "2019-04-14", "last": "2020-04-13"}},
        ],
    }
    meta = dataset_metadata(profile)
    text = json.dumps(meta)
    assert meta["columns"][0]["top_categories"] == [["gold", 0.6]]
    for secret in ("Jane", "description", "Secret Lab", "2019-04-14", "2020-04-13"):
        assert secret not in text
    assert meta["columns"][1]["dropped_because"] == "constant"
    assert meta["columns"][2]["span_days"] == 365.0


async def test_no_raw_rows_or_text_values_in_any_request(fake, make_client, titanic_profile):
    client = make_client()
    await decide_constraints(client, "", titanic_profile, "who survived the Titanic", 8 << 30)
    await summarize(client, "", use_case="who survived the Titanic", task="binary", target="Survived", rows=891,
                    test_metrics={"accuracy": 0.82, "roc_auc": 0.87},
                    feature_importance={"Sex": 0.2, "Pclass": 0.05, "Age": 0.03})
    assert [r.kind for r in fake.requests] == ["constraints", "summary"]
    bodies = fake.bodies()
    assert "who survived the Titanic" in bodies and "Pclass" in bodies
    for column in ("Name", "Ticket", "Cabin"):
        leaked = [v for v in titanic_values(column) if len(v) > 3 and v in bodies]
        assert not leaked, f"{column} values sent to Gemini: {leaked[:3]}"
    with open(dataset("titanic.csv"), newline="") as f:
        lines = f.read().splitlines()[1:]
    assert not [line for line in lines if line in bodies or line.split(",", 3)[-1][:30] in bodies]
