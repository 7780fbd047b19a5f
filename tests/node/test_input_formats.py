"""The files people have, through a real node on loopback (issue 25): a semicolon export with
decimal commas and a Parquet file are accepted, their jobs complete, and predict takes the
same formats (and gzip) with the same answers as plain CSV."""

from __future__ import annotations

import csv
import gzip
import io
import json

import numpy as np
import pandas as pd
import pytest

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from tests.node.helpers import nexus, predict, stub, submit, watch_until_end

ROWS = 80


def homes() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    size = np.round(rng.uniform(20, 140, ROWS), 2)
    rooms = rng.integers(1, 6, ROWS)
    city = rng.choice(["Lyon", "Köln", "Graz"], ROWS)
    price = np.round(size * 31.5 + rooms * 150 + np.where(city == "Graz", -400.0, 250.0) + rng.normal(0, 60, ROWS), 2)
    return pd.DataFrame({"size": size, "rooms": rooms, "city": city, "price": price,
                         "listed": pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(ROWS), unit="D"),
                         "garden": rng.random(ROWS) < 0.4,
                         "sold": np.where(size + rng.normal(0, 15, ROWS) > 80, "yes", "no")})


def parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def values(preds) -> list[float]:
    return [p.value for p in preds]


def test_semicolon_decimal_comma_and_parquet_jobs_complete_and_predict_in_their_formats(node_address, tmp_path):
    s = stub(node_address)
    df = homes()
    euro_df = df.drop(columns=["sold", "listed", "garden"])
    euro = euro_df.to_csv(sep=";", decimal=",", index=False).encode("cp1252")
    assert b";Graz;" in euro and b"," in euro and b"." not in euro.split(b"\n", 1)[1]
    # Both jobs at once: the shared node has two slots.
    a = submit(s, euro, "price", max_trials=1, seed=11)
    b = submit(s, parquet_bytes(df.drop(columns=["price"])), "sold", max_trials=1, seed=11)
    assert a.job.input_format == "cp1252 CSV, semicolon-separated, decimal comma" and a.job.encoding == "cp1252"
    assert "read as cp1252 CSV, semicolon-separated, decimal comma" in a.job.message
    assert b.job.input_format == "Parquet" and b.job.encoding == ""

    ja, _ = watch_until_end(s, a.job_id)
    assert ja.state == pb.COMPLETED, ja.message
    # The decimal-comma cells were numbers: a regression on a numeric "size".
    assert ja.task == pb.REGRESSION and ja.input_format == a.job.input_format
    kinds = {c["name"]: c["kind"] for c in json.loads(ja.profile_json)["columns"]}
    assert kinds == {"size": "numeric", "rooms": "numeric", "city": "categorical"}
    assert json.loads(ja.profile_json)["format"] == "cp1252 CSV, semicolon-separated, decimal comma"
    # Predict takes the same export, gzip-compressed or not, and answers as for plain CSV.
    rows = euro_df.head(12)
    plain = rows.to_csv(index=False).encode()
    _, want = predict(s, ja.model_id, plain)
    for data in (rows.to_csv(sep=";", decimal=",", index=False).encode("cp1252"),
                 gzip.compress(rows.to_csv(sep="\t", index=False).encode("utf-16"))):
        _, got = predict(s, ja.model_id, data)
        assert values(got) == pytest.approx(values(want), rel=1e-6)

    jb, _ = watch_until_end(s, b.job_id)
    assert jb.state == pb.COMPLETED, jb.message
    assert jb.task == pb.BINARY
    kinds = {c["name"]: (c["kind"], c["dtype"]) for c in json.loads(jb.profile_json)["columns"]}
    assert kinds["size"] == ("numeric", "float64") and kinds["listed"] == ("numeric", "date")
    # The CLI predicts a Parquet file as it predicts the same rows as CSV.
    new = df.drop(columns=["price", "sold"]).head(12)
    (tmp_path / "new.parquet").write_bytes(parquet_bytes(new))
    classes, want = predict(s, jb.model_id, new.to_csv(index=False).encode())
    out = nexus(node_address, "predict", jb.job_id, str(tmp_path / "new.parquet"))
    assert out.returncode == 0, out.stderr
    got = list(csv.DictReader(io.StringIO(out.stdout)))
    assert len(got) == 12 and sorted(classes) == ["no", "yes"]
    assert [float(r["proba_yes"]) for r in got] == pytest.approx([p.probabilities[classes.index("yes")]
                                                                   for p in want], rel=1e-6)
