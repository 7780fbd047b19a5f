import re
from pathlib import Path

import pytest

from nexus_node.errors import InvalidInput
from nexus_node.pipeline.csvcheck import check_csv, detect_encoding
from tests.conftest import dataset


def write(tmp_path: Path, data: bytes | str, name: str = "x.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def rows(n: int, target: str = "1") -> str:
    return "a,b,y\n" + "".join(f"{i},{i % 3},{target}\n" for i in range(n))


def test_real_file_passes(insurance_csv):
    s = check_csv(insurance_csv, "charges")
    assert s.rows == 1338 and s.target_present == 1338 and s.encoding == "utf-8"


def test_windows_1252_file_is_detected():
    assert detect_encoding(dataset("book_banning.csv")) == "cp1252"


@pytest.mark.parametrize("data, target, fragment", [
    (b"", "y", "empty"),
    (b"\x00\x01\x02binary\x00", "y", "not a CSV"),
    ("just one column\n1\n2\n", "y", "single column"),
    (rows(20), "price", "'price' is not in the CSV"),
    (rows(20, target=""), "y", "empty in every row"),
    (rows(1), "y", "at least 10"),
    ("a,b,y\n", "y", "no data rows"),
    (rows(20), "  ", "no target column"),
])
def test_bad_uploads_get_a_message_that_says_what_to_fix(tmp_path, data, target, fragment):
    with pytest.raises(InvalidInput, match=fragment):
        check_csv(write(tmp_path, data), target)


def test_unknown_drop_column_is_refused(tmp_path):
    with pytest.raises(InvalidInput, match="columns to drop"):
        check_csv(write(tmp_path, rows(20)), "y", ["nope"])


def test_latin1_fallback_for_bytes_cp1252_cannot_decode(tmp_path):
    # 0x81 is undefined in cp1252, so only latin-1 reads this file.
    p = write(tmp_path, b"a,b,y\n" + b"".join(b"\x81%d,1,%d\n" % (i, i % 2) for i in range(20)))
    assert check_csv(p, "y").encoding == "latin-1"


# ---- the target's task, decided at submit as preparation decides it -----------------------

ODD_CELLS = ["1", "+1", "-1.5", ".5", "5.", "1e5", "1E-3", "1_000", "0x10", "Infinity", "inf", "1,000",
             "$1,234.50", "12%", "١٢", "1e", "e5", "-", "+.5e+2", "00012", "1.2.3", "- 5", "−5", "1d5",
             "True", "1e400", "-0", "12,34", "€5", "+$5", "$-5", "1,234,567.", "%5", "1.e5", "½"]


def test_numbers_parse_as_training_parses_them():
    import pandas as pd

    from nexus_node.pipeline.csvcheck import parse_number
    from nexus_node.pipeline.profile import parse_numbers

    expected = parse_numbers(pd.Series(ODD_CELLS, dtype="str"))
    for cell, want in zip(ODD_CELLS, expected):
        got = parse_number(cell)
        assert (got is None and want != want) or got == want, (cell, got, want)


def _columns() -> dict[str, list[str]]:
    return {
        "two numbers": ["0", "1"] * 10,
        "two reals": ["0.5", "2.25"] * 10,
        "seven whole numbers": [str(i % 7) for i in range(30)],
        "twenty whole numbers": [str(i % 20) for i in range(40)],
        "twenty-one whole numbers": [str(i % 21) for i in range(42)],
        "many whole numbers": [str(i) for i in range(300)],
        "reals": [str(i / 3) for i in range(30)],
        "1 and 1.0 and 2": ["1", "1.0", "2"] * 5,
        "amounts": ["$1,200", "$3,400.50", "$12", "7%"] * 5,
        "text": ["cat", "dog", "cat", "bird"] * 5,
        "yes/no": ["yes", "no"] * 10,
        "numbers and one word": [str(i) for i in range(30)] + ["many"],
        "fifty labels": [f"c{i % 50}" for i in range(100)],
        "missing markers": ["1", "2", "NA", "", "?", "3.5", "nan", "#N/A", "4.25"] * 3,
        "None is a value": ["None", "1"] * 10,
        "constant": ["7"] * 20,
        "constant with gaps": ["7", "NA"] * 10,
        "fifty-one labels": [f"c{i % 51}" for i in range(102)],
        "infinite": ["inf", "1", "2"] * 5,
    }


@pytest.mark.parametrize("name", list(_columns()))
def test_the_task_decided_at_submit_is_the_one_preparation_decides(tmp_path, name):
    from nexus_node.pipeline.csvio import read_table
    from nexus_node.pipeline.profile import detect_target

    cells = _columns()[name]
    p = write(tmp_path, "x,y\n" + "".join(f'{i},"{c}"\n' for i, c in enumerate(cells)))
    df, _ = read_table(p)
    present = df["y"][df["y"].notna()].reset_index(drop=True)
    try:
        want: str | None = detect_target(present, "y").task
    except InvalidInput:
        want = None
    try:
        got: str | None = check_csv(p, "y").task
    except InvalidInput:
        got = None
    assert got == want, (name, got, want)


@pytest.mark.parametrize("data, fragment", [
    ("x,y\n" + "".join(f"{i},7\n" for i in range(20)), "same value (7) in every row"),
    ("x,y\n" + "".join(f"{i},c{i}\n" for i in range(60)), "more than 50 distinct values"),
    ("x,x,y\n" + "".join(f"{i},{i},{i}\n" for i in range(20)), "repeats column names ['x']"),
])
def test_targets_preparation_would_refuse_are_refused_at_submit(tmp_path, data, fragment):
    with pytest.raises(InvalidInput, match=re.escape(fragment)):
        check_csv(write(tmp_path, data), "y")


def test_dropping_every_feature_is_refused(tmp_path):
    with pytest.raises(InvalidInput, match="no feature column"):
        check_csv(write(tmp_path, "a,b,y\n" + "".join(f"{i},{i},{i % 2}\n" for i in range(20))), "y", ["a", "b"])


def test_the_task_scan_keeps_bounded_memory(tmp_path):
    p = write(tmp_path, "x,y\n" + "".join(f"{i},{i * 1.5}\n" for i in range(20_000)))
    s = check_csv(p, "y")
    assert s.task == "regression"
    from nexus_node.pipeline.csvcheck import MAX_CLASSES, MAX_INTEGER_CLASSES, TargetScan

    scan = TargetScan()
    for i in range(20_000):
        scan.add(f"label{i}")
    assert len(scan.texts) == MAX_CLASSES + 1 and len(scan.numbers) <= MAX_INTEGER_CLASSES + 1


# ---- the files people have (issue 25): accepted at submit, or refused saying what they are ---

def _table(sep: str = ",", decimal: str = ".") -> str:
    return f"size{sep}city{sep}price\n" + "".join(
        f"{i * 1.25 + 0.5:.2f}{sep}{'ABC'[i % 3]}{sep}{i * 1234.5 + 10.25:.2f}\n".replace(".", decimal)
        for i in range(30))


@pytest.mark.parametrize("name, data", [
    ("Excel's Unicode text: UTF-16 with a mark, tabs", ("\ufeff" + _table("\t")).encode("utf-16-le")),
    ("UTF-16 big-endian", ("\ufeff" + _table()).encode("utf-16-be")),
    ("gzip-compressed", __import__("gzip").compress(_table().encode())),
    ("semicolons and decimal commas", _table(";", ",").encode("cp1252")),
    ("tab-separated", _table("\t").encode()),
    ("pipe-separated", _table("|").encode()),
])
def test_the_files_people_have_are_accepted_at_submit(tmp_path, name, data):
    s = check_csv(write(tmp_path, data), "price")
    assert s.columns == ["size", "city", "price"], name
    assert (s.rows, s.target_present, s.task) == (30, 30, "regression"), name


@pytest.mark.parametrize("data, fragment", [
    (b'[{"size": 1, "price": 2}]', "looks like JSON"),
    (b"<!doctype html><html><body><table></table></body></html>", "looks like HTML"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is a PNG image"),
])
def test_json_html_and_binary_uploads_say_what_they_look_like_and_what_is_read(tmp_path, data, fragment):
    with pytest.raises(InvalidInput) as e:
        check_csv(write(tmp_path, data), "price")
    assert fragment in str(e.value)
    assert "optionally gzip-compressed (.csv.gz), or a Parquet file" in str(e.value)


def test_infinite_target_cells_are_named_with_their_count(tmp_path):
    data = "x,y\n" + "".join(f"{i},{'inf' if i % 13 == 0 else i * 1.37}\n" for i in range(200))
    with pytest.raises(InvalidInput, match=re.escape("target column 'y' holds 16 infinite value(s)")):
        check_csv(write(tmp_path, data), "y")
