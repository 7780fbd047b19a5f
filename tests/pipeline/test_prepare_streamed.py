"""Preparation in two passes over chunks of the upload (issue 24): whatever the chunk size,
the arrays, the preprocessing and the profile are those of reading the table whole, bit for
bit; and preparing a table holds one column and a chunk of rows, where reading it whole holds
every column."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from nexus_node.pipeline.column_store import ColumnStore, LazyTable
from nexus_node.pipeline.csvcheck import check_csv
from nexus_node.pipeline.prepare import prepare
from tests.conftest import dataset


def _prepared(path: Path, target: str, out: Path, rows: int, **extra: Any) -> dict[str, Any]:
    fmt = check_csv(path, target).format
    return prepare(str(path), target, 0, str(out), fmt=fmt, chunk_rows=rows, **extra)


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["preprocessing"] == b["preprocessing"] and a["profile"] == b["profile"] and a["split"] == b["split"]
    assert set(a["files"]) == set(b["files"])
    for name in a["files"]:
        x, y = np.load(a["files"][name]), np.load(b["files"][name])
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y, equal_nan=True), name


@pytest.mark.parametrize("name, target, drop", [
    ("book_banning.csv", "removed", ["rownames"]),     # cp1252, dates, high-cardinality codes
    ("titanic.csv", "Survived", []),                  # missing cells, free text dropped
])
def test_any_chunk_size_prepares_the_arrays_of_one_chunk_bit_for_bit(tmp_path, name, target, drop):
    whole = _prepared(dataset(name), target, tmp_path / "whole", 10**9, drop_columns=drop)
    chunked = _prepared(dataset(name), target, tmp_path / "chunked", 37, drop_columns=drop)
    _same(whole, chunked)
    assert not [p for p in (tmp_path / "chunked").iterdir() if p.name.startswith(".columns")]   # scratch gone


def test_a_gzip_decimal_comma_table_with_rows_lacking_a_target_prepares_alike_in_chunks(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["größe;farbe;preis"]
    for i in range(400):
        price = "" if i % 17 == 0 else f"{rng.uniform(1, 100):.2f}".replace(".", ",")
        lines.append(f"{rng.uniform(0, 3):.3f}".replace(".", ",") + f";{'rot grün blau'.split()[i % 3]};{price}")
    path = tmp_path / "table.csv.gz"
    path.write_bytes(gzip.compress("\n".join(lines).encode("utf-8")))
    whole = _prepared(path, "preis", tmp_path / "whole", 10**9)
    chunked = _prepared(path, "preis", tmp_path / "chunked", 7)
    _same(whole, chunked)
    assert whole["profile"]["rows_dropped_missing_target"] == 24 and whole["profile"]["rows"] == 376
    assert whole["format"]["decimal"] == "," and whole["profile"]["task"] == "regression"


def test_the_column_store_gives_back_the_cells_it_was_given(tmp_path):
    frame = pd.DataFrame({"a": ["x", None, "ü,\n\"q\"", "", "7"], "b": ["1", "2", None, "4", "5"]}, dtype="str")
    store = ColumnStore(tmp_path)
    store.append(frame.iloc[:2])
    store.append(frame.iloc[2:].reset_index(drop=True))
    assert store.rows == 5 and store.columns == ["a", "b"]
    for name in ("a", "b"):
        pd.testing.assert_series_equal(store.column(name), frame[name])
    table = LazyTable(store, np.array([0, 2, 3, 4]))
    pd.testing.assert_series_equal(table["a"], frame["a"].iloc[[0, 2, 3, 4]].reset_index(drop=True))
    picked = table.take(np.array([1, 3]))
    pd.testing.assert_series_equal(picked["b"], frame["b"].iloc[[0, 2, 3, 4]].reset_index(drop=True).iloc[[1, 3]])
    assert len(picked) == 2 and list(picked.columns) == ["a", "b"]


_PEAK = """
import sys, tempfile
from pathlib import Path
from nexus_node.pipeline import csvio
from nexus_node.pipeline.csvcheck import check_csv
from nexus_node.pipeline.prepare import prepare
path = Path(sys.argv[2])
fmt = check_csv(path, "y").format

def status(field):
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])

Path("/proc/self/clear_refs").write_text("5")   # the peak starts again from here
before = status("VmRSS")
if sys.argv[1] == "read":
    frame, _ = csvio.read_table(path, fmt)
else:
    prepare(str(path), "y", 0, tempfile.mkdtemp(dir=sys.argv[3]), fmt=fmt, chunk_rows=20_000)
print(status("VmHWM") - before)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads and resets peak memory through /proc")
def test_preparing_holds_a_column_at_a_time_where_reading_whole_holds_every_column(tmp_path):
    def table(n_columns: int) -> Path:
        rng = np.random.default_rng(n_columns)
        n = 60_000
        columns = {f"n{i}": np.round(rng.normal(size=n), 4).astype(str) for i in range(n_columns // 3)}
        columns.update({f"c{i}": rng.choice([f"value-{j}" for j in range(40)], size=n)
                        for i in range(n_columns - n_columns // 3)})
        columns["y"] = np.where(rng.uniform(size=n) > 0.5, "yes", "no")
        path = tmp_path / f"table{n_columns}.csv"
        pd.DataFrame(columns).to_csv(path, index=False)
        return path

    def rise(mode: str, path: Path) -> int:   # peak resident KB over the start, in a fresh process
        out = subprocess.run([sys.executable, "-c", _PEAK, mode, str(path), str(tmp_path)], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).parents[2])
        return int(out.stdout.split()[-1])

    narrow, wide = table(10), table(40)
    read = {k: rise("read", p) for k, p in (("narrow", narrow), ("wide", wide))}
    prepared = {k: rise("prepare", p) for k, p in (("narrow", narrow), ("wide", wide))}
    print(f"peak rise, KB: read whole {read}, prepared {prepared}")   # the figures the docs quote (pytest -s)
    # Thirty columns more: reading whole holds every one of them (measured: +105 MB), while
    # preparing holds one column and a chunk of rows (+21 MB).
    assert read["wide"] - read["narrow"] > 3 * (prepared["wide"] - prepared["narrow"]), (read, prepared)
    assert prepared["wide"] < 0.6 * read["wide"], (prepared, read)


def test_a_fault_deep_in_the_file_is_refused_as_reading_it_whole_refuses_it(tmp_path):
    from nexus_node.errors import InvalidInput
    from nexus_node.pipeline.tableformat import TableFormat

    rows = [f"{i},{i % 3},{'a' if i % 2 else 'b'}" for i in range(400)]
    fmt = TableFormat("csv", "", "utf-8", ",", ".")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("x,k,y\n" + "\n".join(rows[:300] + ["1,2,3,4,5"] + rows[300:]) + "\n")
    with pytest.raises(InvalidInput, match="is not a readable CSV .* same number of fields"):
        prepare(str(ragged), "y", 0, str(tmp_path / "out1"), fmt=fmt, chunk_rows=50)
    undecodable = tmp_path / "latin.csv"
    undecodable.write_bytes(("x,k,y\n" + "\n".join(rows[:350])).encode() + b"\n9,1,caf\xe9\n")
    with pytest.raises(InvalidInput, match="does not decode as utf-8"):
        prepare(str(undecodable), "y", 0, str(tmp_path / "out2"), fmt=fmt, chunk_rows=50)
    assert not [p for p in (tmp_path / "out1").iterdir() if p.name.startswith(".columns")]


def test_large_arrays_come_in_row_shards_that_rejoin_to_the_arrays_and_train_alike(tmp_path):
    from nexus_node.jobs.search import trial_files
    from nexus_node.pipeline.train import train_and_score
    from nexus_node.runner import arrays, memory

    path = dataset("adult.csv")
    whole = _prepared(path, "class", tmp_path / "whole", 10**9)
    sharded = _prepared(path, "class", tmp_path / "sharded", 10**9, shard_bytes=1 << 20)   # ~2,800 rows a shard
    names = set(sharded["files"])
    assert {"X_train#0", "X_train#1", "y_train#0", "codes_test#0"} <= names and "X_train" not in names
    assert "tree_columns" in names and "codes_layout" in names         # small files stay whole
    grouped = arrays.group_shards(sharded["files"])
    assert set(grouped) == set(whole["files"])
    for name, entry in grouped.items():
        np.testing.assert_array_equal(arrays.load_array(entry), np.load(whole["files"][name]), err_msg=name)
        assert arrays.array_shape(entry) == np.load(whole["files"][name]).shape
    # A trial never fetches a test shard.
    assert {n.partition("#")[0] for n in trial_files(sharded["files"])} == {
        n for n in whole["files"] if not n.endswith("_test")}
    mlp = {"n_layers": 1, "width": 16, "activation": "relu", "dropout": 0.0, "learning_rate": 3e-3,
           "weight_decay": 0.0, "batch_size": 512, "epochs": 2}
    try:
        for budget in (0, 4):                 # held in memory, then streamed across the shards
            memory.set_budget(budget)
            values = []
            for files in (whole["files"], grouped):
                arrays._device_data.clear()
                data = arrays.data_for(files, "binary", 2)
                values.append(train_and_score(data, mlp, "binary", 2, "roc_auc", seed=0).value)
            assert values[0] == values[1] and values[0] > 0.85, (budget, values)
    finally:
        memory.set_budget(0)
        for cache in (arrays._device_data, arrays._streamed):
            cache.clear()
