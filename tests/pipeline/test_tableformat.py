"""The files people have (issue 25): UTF-16, gzip, semicolons with decimal commas, tabs,
pipes and Parquet are read; JSON, HTML and binary files are refused with what they look like.

Each upload goes through the node's check (``check_csv``, stdlib; a Parquet file through
``check_table``, which a runner runs) and through the runner's reader (``read_table``), and
both must read it the same way.
"""

from __future__ import annotations

import gzip
import re

import numpy as np
import pandas as pd
import pytest

from nexus_node.errors import InvalidInput, TooLarge
from nexus_node.pipeline import csvio, tableformat
from nexus_node.pipeline.csvcheck import check_csv, upload_container
from nexus_node.pipeline.profile import detect_target, parse_numbers, profile_columns
from nexus_node.pipeline.tableformat import TableFormat
from tests.pipeline.helpers import write_csv

ROWS = 40


def frame() -> pd.DataFrame:
    """A small table with what spreadsheets hold: reals, whole numbers, text, a gap."""
    i = np.arange(ROWS)
    return pd.DataFrame({
        "size": np.round(i * 1.25 + 0.5, 2),
        "rooms": i % 5 + 1,
        "city": np.where(i % 3 == 0, "Lyon", np.where(i % 3 == 1, "Köln", "Graz")),
        "price": np.round(i * 1234.5 + 10.25, 2),
    })


def as_csv(df: pd.DataFrame, sep: str = ",", decimal: str = ".") -> str:
    return df.to_csv(index=False, sep=sep, decimal=decimal, lineterminator="\n")


def read_both(path, target: str = "price"):
    """The node's check and the runner's read of one upload."""
    return check_csv(path, target, max_bytes=1 << 20), csvio.read_table(path)


def same_numbers(df: pd.DataFrame, column: str, expected) -> None:
    np.testing.assert_allclose(parse_numbers(df[column]), np.asarray(expected, dtype=float))


# ---- text encodings and delimiters ----------------------------------------------------------

@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_with_a_byte_order_mark_is_read_by_the_check_and_the_reader(tmp_path, codec):
    # What Excel's "Unicode text" writes: UTF-16 with a byte-order mark, tab-separated.
    bom = {"utf-16-le": "\ufeff", "utf-16-be": "\ufeff"}.get(codec, "")
    path = write_csv(tmp_path, (bom + as_csv(frame(), sep="\t")).encode(codec))
    summary, (df, fmt) = read_both(path)
    assert summary.format == fmt == TableFormat("csv", "", "utf-16", "\t", ".")
    assert summary.rows == ROWS and summary.task == "regression"
    assert list(df.columns) == ["size", "rooms", "city", "price"] and df["city"].iloc[1] == "Köln"
    same_numbers(df, "price", frame()["price"])


@pytest.mark.parametrize("sep, name", [("\t", "tab-separated"), ("|", "pipe-separated"), (";", "semicolon-separated")])
def test_tab_pipe_and_semicolon_separated_files_are_accepted_at_submit(tmp_path, sep, name):
    path = write_csv(tmp_path, as_csv(frame(), sep=sep))
    summary, (df, fmt) = read_both(path)
    assert summary.columns == ["size", "rooms", "city", "price"] and summary.task == "regression"
    assert summary.format == fmt and fmt.delimiter == sep and fmt.decimal == "."
    assert name in fmt.describe()
    same_numbers(df, "size", frame()["size"])


# ---- decimal commas ------------------------------------------------------------------------------

def test_a_semicolon_export_with_decimal_commas_is_read_as_numbers(tmp_path):
    # What a spreadsheet in most of Europe writes: ";" between cells, "," before decimals.
    df0 = frame()
    df0.loc[3, "price"] = np.nan
    text = as_csv(df0, sep=";", decimal=",")
    assert "1234,5" not in text and ";1244,75" in text   # the file really has decimal commas
    path = write_csv(tmp_path, text.encode("cp1252"))
    summary, (df, fmt) = read_both(path)
    assert summary.format == fmt == TableFormat("csv", "", "cp1252", ";", ",")
    assert fmt.describe() == "cp1252 CSV, semicolon-separated, decimal comma"
    # The target is a number (regression), not text with 39 distinct values.
    assert summary.task == "regression" and summary.target_present == ROWS - 1
    same_numbers(df, "size", df0["size"])
    same_numbers(df.dropna(subset=["price"]), "price", df0["price"].dropna())
    kinds = {c.name: c.kind for c in profile_columns(df, "price", [])}
    assert kinds == {"size": "numeric", "rooms": "numeric", "city": "categorical"}


@pytest.mark.parametrize("cell, plain", [
    ("2,5", "2.5"), ("-0,25", "-0.25"), (",5", ".5"), ("1.234,56", "1234.56"), ("1.234.567,5", "1234567.5"),
    ("1,5E+03", "1.5E+03"), ("12,5 %", "12.5 %"), ("€ 3,50", "€ 3.50"), ("1.234", "1234"),
    ("1,234", "1.234"), ("Lyon, FR", "Lyon, FR"), ("01.02.2020", "01.02.2020"), ("7", "7"),
])
def test_a_decimal_comma_table_rewrites_only_its_numbers(cell, plain):
    assert tableformat.to_plain(cell) == plain


@pytest.mark.parametrize("cells, hint, mark", [
    (["2,5", "3"], "", ","),
    (["2,5", "3.5"], "", "."),           # both marks: the plain reading
    (["1,234", "12,500"], "", "."),      # thousands or decimals: the plain reading...
    (["1,234", "12,500"], ",", ","),     # ...unless the training upload had a decimal comma
    (["1.234", "7"], "", "."),
    (["x", "7"], ",", ","),              # nothing tells: the hint
    (["x", "7"], "", "."),
])
def test_the_decimal_mark_is_a_comma_only_when_the_cells_say_so(cells, hint, mark):
    evidence = tableformat.DecimalEvidence()
    for c in cells:
        evidence.add(c)
    assert evidence.decide(";", hint) == mark
    assert evidence.decide(",", hint) == "."   # never with a comma delimiter


def test_an_ambiguous_semicolon_file_keeps_the_plain_reading(tmp_path):
    text = "a;y\n" + "".join(f"{i};{i},{(i * 7) % 1000:03d}\n" for i in range(1, 31))   # "1,007": grouped
    path = write_csv(tmp_path, text)
    summary, (df, fmt) = read_both(path, "y")
    assert summary.format.decimal == fmt.decimal == "."
    same_numbers(df, "y", [i * 1000 + (i * 7) % 1000 for i in range(1, 31)])


def test_a_recorded_format_is_read_as_recorded(tmp_path):
    # Preparation gets the format the node recorded at submit and does not detect again.
    path = write_csv(tmp_path, "a;b\n1;2,5\n")
    df, fmt = csvio.read_table(path, TableFormat("csv", "", "utf-8", ";", "."))
    assert df["b"].iloc[0] == "2,5" and fmt.decimal == "."
    df, fmt = csvio.read_table(path)
    assert df["b"].iloc[0] == "2.5" and fmt.decimal == ","


def test_a_prediction_input_takes_its_training_uploads_mark_where_its_cells_leave_it_open(tmp_path):
    path = write_csv(tmp_path, "a;b\n1;1,250\n2;3\n")
    assert csvio.read_table(path)[0]["b"].iloc[0] == "1,250"     # alone: the plain reading (1250)
    hinted, fmt = csvio.read_table(path, hint=TableFormat("csv", "", "utf-8", ";", ","))
    assert hinted["b"].iloc[0] == "1.250" and fmt.decimal == ","


# ---- gzip -------------------------------------------------------------------------------------------

def test_a_gzip_compressed_csv_is_read_by_the_check_and_the_reader(tmp_path):
    path = write_csv(tmp_path, gzip.compress(as_csv(frame(), sep=";", decimal=",").encode()), "data.csv.gz")
    summary, (df, fmt) = read_both(path)
    assert summary.format == fmt == TableFormat("csv", "gzip", "utf-8", ";", ",")
    assert fmt.describe() == "gzip-compressed utf-8 CSV, semicolon-separated, decimal comma"
    assert summary.task == "regression" and summary.rows == ROWS
    same_numbers(df, "price", frame()["price"])


def test_a_gzip_upload_that_expands_past_the_limit_is_refused_without_expanding_it(tmp_path):
    # 64 MiB of CSV in about 64 KiB: the check stops at the node's limit, not at the end.
    body = b"a,y\n" + b"1,2\n" * (16 << 20)
    path = write_csv(tmp_path, gzip.compress(body, compresslevel=9), "bomb.csv.gz")
    assert path.stat().st_size < 1 << 20
    with pytest.raises(TooLarge, match=r"decompresses to more than this node's limit of 1 MiB \(the node's "
                                       r"--max-upload-mb\)"):
        check_csv(path, "y", max_bytes=1 << 20, limit_flag="--max-upload-mb")
    with pytest.raises(TooLarge, match="decompresses to more than"):
        csvio.read_table(path, max_bytes=1 << 20)


def test_a_damaged_gzip_file_says_so(tmp_path):
    data = gzip.compress(as_csv(frame()).encode())
    path = write_csv(tmp_path, data[: len(data) // 2], "cut.csv.gz")
    with pytest.raises(InvalidInput, match="starts as gzip but does not decompress"):
        check_csv(path, "price")


# ---- Parquet -----------------------------------------------------------------------------------------

def typed_frame() -> pd.DataFrame:
    df = frame()
    df["size"] = df["size"].astype("float32").where(df.index % 7 != 0)   # NaN: missing
    df["listed"] = pd.to_datetime("2024-01-01") + pd.to_timedelta(np.arange(ROWS), unit="D")
    df["garden"] = np.arange(ROWS) % 2 == 0
    df["city"] = df["city"].astype("category")
    df["note"] = pd.Series([None if i % 4 == 0 else f"n{i % 3}" for i in range(ROWS)], dtype="object")
    return df


def test_parquet_reads_as_the_same_text_cells_a_csv_of_the_table_gives(tmp_path):
    df0 = typed_frame()
    df0.to_parquet(tmp_path / "t.parquet", index=False)
    df0.to_csv(tmp_path / "t.csv", index=False)
    assert upload_container(tmp_path / "t.parquet") == "parquet"
    pq_cells, fmt = csvio.read_table(tmp_path / "t.parquet")
    csv_cells, _ = csvio.read_table(tmp_path / "t.csv")
    assert fmt == TableFormat("parquet") and fmt.describe() == "Parquet"
    assert list(pq_cells.columns) == list(csv_cells.columns)
    for name in ("rooms", "city", "listed", "garden", "note"):
        assert pq_cells[name].tolist() == csv_cells[name].tolist(), name
    same_numbers(pq_cells, "size", parse_numbers(csv_cells["size"]))
    profile = lambda df: [c.to_dict() for c in profile_columns(df, "price", [])]  # noqa: E731
    assert profile(pq_cells) == profile(csv_cells)
    # The submit checks, run in a runner for Parquet, agree with the node's on the CSV.
    s_pq, s_csv = csvio.check_table(tmp_path / "t.parquet", "price"), check_csv(tmp_path / "t.csv", "price")
    assert (s_pq.columns, s_pq.rows, s_pq.target_present, s_pq.task) == \
        (s_csv.columns, s_csv.rows, s_csv.target_present, s_csv.task)


def test_parquet_with_an_index_and_a_zone_aware_time(tmp_path):
    df0 = pd.DataFrame({"t": pd.date_range("2024-03-01 08:30", periods=12, freq="h", tz="Europe/Paris"),
                        "y": np.arange(12) % 3}, index=np.arange(100, 112))
    df0.to_parquet(tmp_path / "t.parquet")
    df, _ = csvio.read_table(tmp_path / "t.parquet")
    assert list(df.columns) == ["t", "y"]            # the unnamed index is not a column
    assert df["t"].iloc[0] == "2024-03-01 07:30:00"  # UTC, whole seconds


def test_a_parquet_file_past_the_limit_is_refused_from_its_footer(tmp_path):
    # One value repeated: a few KiB on disk, 400,000 cells once read.
    pd.DataFrame({"a": np.zeros(200_000), "y": np.ones(200_000)}).to_parquet(tmp_path / "big.parquet")
    assert (tmp_path / "big.parquet").stat().st_size < 64 << 10
    with pytest.raises(TooLarge, match=r"holds 200,000 rows of 2 columns .* limit of 0.0954 MiB"):
        csvio.read_table(tmp_path / "big.parquet", max_bytes=100_000)


def test_damaged_parquet_says_so(tmp_path):
    path = write_csv(tmp_path, b"PAR1" + b"\x00" * 64 + b"PAR1", "bad.parquet")
    with pytest.raises(InvalidInput, match="starts as Parquet but cannot be read"):
        csvio.read_table(path)


# ---- what is refused, and how -----------------------------------------------------------------

@pytest.mark.parametrize("data, looks_like", [
    (b'[{"a": 1, "y": 2}, {"a": 3, "y": 4}]', "looks like JSON"),
    (b'{"a": 1, "y": 2}\n{"a": 3, "y": 4}\n', "looks like JSON"),
    (b"\xef\xbb\xbf  {\n  \"rows\": []\n}", "looks like JSON"),
    (b"<!DOCTYPE html>\n<html><body><table><tr><td>1</td></tr></table></body></html>", "looks like HTML or XML"),
    (b"<?xml version='1.0'?><rows/>", "looks like HTML or XML"),
    (b"PK\x03\x04\x14\x00\x06\x00rest", "is a zip archive or an Excel workbook"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1rest", "is an Excel 97-2003 workbook"),
    (b"%PDF-1.7\n", "is a PDF document"),
    (b"\x00\x01\x02\x03binary\x00", "is binary data"),
    ("a,y\n1,2\n".encode("utf-16-le"), "looks like UTF-16 text without a byte-order mark"),
    (gzip.compress(b'[{"a": 1}]', mtime=0), "looks like JSON"),
])
def test_other_files_are_refused_with_what_they_look_like_and_what_is_read(tmp_path, data, looks_like):
    path = write_csv(tmp_path, data)
    for read in (lambda: check_csv(path, "y"), lambda: csvio.read_table(path)):
        with pytest.raises(InvalidInput) as e:
            read()
        message = str(e.value)
        assert looks_like in message
        assert all(word in message for word in ("CSV", "UTF-16", "gzip", "Parquet")), message


# ---- non-finite targets -------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["inf", "-Infinity", "1e400"])
def test_infinite_target_values_are_named_with_their_count(tmp_path, bad):
    cells = [bad if i % 13 == 0 else f"{i * 1.37:.2f}" for i in range(200)]   # 16 of 200
    path = write_csv(tmp_path, "a,y\n" + "".join(f"{i},{c}\n" for i, c in enumerate(cells)))
    expected = f"target column 'y' holds 16 infinite value(s) such as '{bad}'"
    with pytest.raises(InvalidInput, match=re.escape(expected)):
        check_csv(path, "y")
    df, _ = csvio.read_table(path)
    with pytest.raises(InvalidInput, match=re.escape(expected)):
        detect_target(df["y"], "y")


# ---- the recorded format --------------------------------------------------------------------------

def test_a_format_record_round_trips_and_a_bad_one_is_refused():
    for fmt in (TableFormat("csv", "gzip", "utf-16", "\t", "."), TableFormat("csv", "", "cp1252", ";", ","),
                TableFormat("parquet")):
        assert TableFormat.from_dict(fmt.to_dict()) == fmt
    for bad in ({"container": "xlsx"}, {"delimiter": ":"}, {"decimal": "'"}, {"compression": "zip"},
                {"encoding": "no-such-codec"}):
        with pytest.raises(ValueError):
            TableFormat.from_dict(bad)

