"""Fast checks of an uploaded CSV before a job is committed (stdlib only: runs in the node).

The node must answer a bad upload with a clear error *before* anything is stored; the full
profiling happens later in a runner. These checks read the file once, streaming.
"""

from __future__ import annotations

import codecs
import csv
import io
from dataclasses import dataclass
from pathlib import Path

from nexus_node.errors import InvalidInput

MISSING = frozenset({"", "?", "na", "n/a", "nan", "null", "none"})
MIN_ROWS = 10
_SNIFF = 1 << 16


@dataclass(frozen=True)
class CsvSummary:
    encoding: str
    columns: list[str]
    rows: int
    target_present: int       # rows whose target is not a missing marker


def detect_encoding(path: Path) -> str:
    """UTF-8 (with or without BOM) if the whole file decodes; else Windows-1252 if it does;
    else latin-1, which decodes any byte."""
    with open(path, "rb") as f:
        head = f.read(3)
    start = "utf-8-sig" if head == codecs.BOM_UTF8 else "utf-8"
    for enc in (start, "cp1252"):
        dec = codecs.getincrementaldecoder(enc)()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    dec.decode(chunk)
                dec.decode(b"", final=True)
            return enc
        except UnicodeDecodeError:
            continue
    return "latin-1"


def check_csv(path: Path, target: str, drop_columns: list[str] | tuple[str, ...] = ()) -> CsvSummary:
    """Validate the upload for a job predicting ``target``.

    Raises:
        InvalidInput: with a message that says what to fix.
    """
    size = path.stat().st_size
    if size == 0:
        raise InvalidInput("the uploaded file is empty: send a CSV file with a header row and data rows")
    with open(path, "rb") as f:
        head = f.read(_SNIFF)
    if b"\x00" in head:
        raise InvalidInput("the uploaded file is not a CSV (it contains binary data): send a comma-separated text file")
    encoding = detect_encoding(path)
    target = target.strip()
    if not target:
        raise InvalidInput("no target column given: pass --target with the column to predict")
    with open(path, encoding=encoding, newline="") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
        except csv.Error as e:
            raise InvalidInput(f"the file is not a readable CSV: {e}") from None
        if not header or not any(h.strip() for h in header):
            raise InvalidInput("the CSV has no header row: the first line must name the columns")
        columns = [h.strip() for h in header]
        if len(columns) < 2:
            raise InvalidInput(
                "the CSV has a single column: a table needs a target and at least one feature "
                "column, separated by commas"
            )
        if target not in columns:
            raise InvalidInput(
                f"target column {target!r} is not in the CSV; columns are: {_preview(columns)}"
            )
        missing_drops = [c for c in drop_columns if c.strip() not in columns]
        if missing_drops:
            raise InvalidInput(f"columns to drop {missing_drops} are not in the CSV; columns are: {_preview(columns)}")
        if target in {c.strip() for c in drop_columns}:
            raise InvalidInput(f"the target column {target!r} cannot also be dropped")
        ti = columns.index(target)
        rows = present = bad = 0
        try:
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                rows += 1
                if len(row) != len(columns):
                    bad += 1
                    if bad > max(5, rows // 10):
                        raise InvalidInput(
                            f"row {rows + 1} has {len(row)} fields but the header has {len(columns)}: "
                            "the file is not a consistent CSV (check the delimiter and quoting)"
                        )
                    continue
                if row[ti].strip().lower() not in MISSING:
                    present += 1
        except csv.Error as e:
            raise InvalidInput(f"the CSV cannot be parsed near row {rows + 1}: {e}") from None
    if rows == 0:
        raise InvalidInput("the CSV has a header but no data rows")
    if present == 0:
        raise InvalidInput(f"target column {target!r} is empty in every row: choose a column with values")
    if present < MIN_ROWS:
        raise InvalidInput(
            f"only {present} row(s) have a value for {target!r}: at least {MIN_ROWS} are needed "
            "to train, validate and test a model"
        )
    return CsvSummary(encoding=encoding, columns=columns, rows=rows, target_present=present)


def _preview(columns: list[str], n: int = 12) -> str:
    shown = ", ".join(repr(c) for c in columns[:n])
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > n else "")


def header_of(data: bytes) -> list[str]:
    """Column names of a CSV given as bytes (for Predict inputs)."""
    text = data.decode("utf-8", errors="replace")
    row = next(csv.reader(io.StringIO(text)), [])
    return [c.strip() for c in row]
