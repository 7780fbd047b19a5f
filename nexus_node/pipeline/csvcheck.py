"""Fast checks of an uploaded CSV before a job is committed (stdlib only: runs in the node).

The node must answer a bad upload with a clear error *before* anything is stored; the full
profiling happens later in a runner. These checks read the file once, streaming.
"""

from __future__ import annotations

import codecs
import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from nexus_node.errors import InvalidInput

MISSING = frozenset({"", "?", "na", "n/a", "nan", "null", "none"})
# The cells training reads as "no value" (nexus_node.pipeline.csvio uses this set): the
# target's task is decided on the other cells, here as in preparation.
MISSING_MARKERS = frozenset({"", "?", "NA", "N/A", "n/a", "null", "NULL", "NaN", "nan", "#N/A"})
MIN_ROWS = 10
_SNIFF = 1 << 16
# How a target column defines its task (see target_task); nexus_node.pipeline.profile
# decides with the same function.
MAX_CLASSES = 50           # a text target with more distinct values is refused
MAX_INTEGER_CLASSES = 20   # whole numbers with at most this many values are classes
REGRESSION, BINARY, MULTICLASS = "regression", "binary", "multiclass"

_PLAIN = re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$")
# The same as nexus_node.pipeline.profile's: a currency sign, a trailing percent sign,
# thousands separators in groups of three.
_DECORATED = re.compile(r"^(?P<sign>[-+]?)[$€£¥]?\s*(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d*)?|\d*\.?\d+)\s*%?$",
                        re.ASCII)


def parse_number(cell: str) -> float | None:
    """A stripped cell as a finite number the way training parses it
    (``nexus_node.pipeline.profile.parse_numbers``), or None."""
    if _PLAIN.match(cell):
        v = float(cell)
    else:
        m = _DECORATED.match(cell)
        if not m:
            return None
        v = float(m["sign"] + m["num"].replace(",", ""))
    return v if math.isfinite(v) else None


def target_task(name: str, numeric: bool, distinct: int, integral: bool, example: str = "") -> str:
    """The task a target column defines, from what its (non-missing) cells are.

    Numbers with exactly two values are binary, whole numbers with up to
    :data:`MAX_INTEGER_CLASSES` values multiclass, other numbers regression. Text with two
    values is binary, with up to :data:`MAX_CLASSES` values multiclass.

    Args:
        name: The target column (for messages).
        numeric: Every cell is a number.
        distinct: How many distinct values (numbers when ``numeric``, else texts); any
            count past both limits means "many".
        integral: Every value is a whole number (read only when ``numeric``).
        example: One cell, for the message about a constant target.

    Returns:
        ``"regression"``, ``"binary"`` or ``"multiclass"``.

    Raises:
        InvalidInput: The target is constant, or text with too many distinct values.
    """
    if distinct < 2:
        raise InvalidInput(f"target column {name!r} has the same value ({example}) in every row; "
                           "choose a column whose values vary")
    if numeric:
        if distinct == 2 or (integral and distinct <= MAX_INTEGER_CLASSES):
            return BINARY if distinct == 2 else MULTICLASS
        return REGRESSION
    if distinct > MAX_CLASSES:
        raise InvalidInput(
            f"target column {name!r} is text with more than {MAX_CLASSES} distinct values; at most "
            f"{MAX_CLASSES} classes are supported: group rare labels, or choose a numeric target for regression"
        )
    return BINARY if distinct == 2 else MULTICLASS


@dataclass
class TargetScan:
    """What :func:`target_task` needs of a target column, gathered one cell at a time in
    bounded memory: distinct values are kept only up to the counts that can change the
    answer."""

    numeric: bool = True
    integral: bool = True
    example: str = ""
    numbers: set[float] = field(default_factory=set)
    texts: set[str] = field(default_factory=set)

    def add(self, cell: str) -> None:
        if cell in MISSING_MARKERS:
            return
        if not self.example:
            self.example = cell
        if len(self.texts) <= MAX_CLASSES:
            self.texts.add(cell)
        if self.numeric:
            v = parse_number(cell)
            if v is None:
                self.numeric = False
            elif len(self.numbers) <= MAX_INTEGER_CLASSES:
                self.numbers.add(v)
                self.integral = self.integral and v.is_integer()

    def task(self, name: str) -> str:
        distinct = len(self.numbers) if self.numeric else len(self.texts)
        return target_task(name, self.numeric, distinct, self.integral, self.example)


@dataclass(frozen=True)
class CsvSummary:
    encoding: str
    columns: list[str]
    rows: int
    target_present: int       # rows whose target is not a missing marker
    task: str = ""            # what preparation will decide: regression | binary | multiclass


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
        repeated = sorted({c for c in columns if c and columns.count(c) > 1})
        if repeated:
            raise InvalidInput(f"the CSV repeats column names {repeated}; give every column a unique name")
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
        if not set(columns) - {target} - {c.strip() for c in drop_columns}:
            raise InvalidInput("dropping those columns leaves no feature column: keep at least one column "
                               "besides the target")
        ti = columns.index(target)
        rows = present = bad = 0
        scan = TargetScan()
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
                cell = row[ti].strip()
                if cell.lower() not in MISSING:
                    present += 1
                scan.add(cell)
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
    return CsvSummary(encoding=encoding, columns=columns, rows=rows, target_present=present,
                      task=scan.task(target))


def _preview(columns: list[str], n: int = 12) -> str:
    shown = ", ".join(repr(c) for c in columns[:n])
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > n else "")

