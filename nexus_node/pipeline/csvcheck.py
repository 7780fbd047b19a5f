"""Fast checks of an uploaded CSV before a job is committed (stdlib only: runs in the node).

The node must answer a bad upload with a clear error *before* anything is stored; the full
profiling happens later in a runner. These checks stream the file (gzip-compressed or not)
and detect how to read it (:class:`~nexus_node.pipeline.tableformat.TableFormat`): the
job records that, and preparation reads the upload the same way. A Parquet upload is checked
in a runner with the same header and target checks (:func:`check_columns`,
:class:`TargetScan`, :func:`summarize`).
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Sequence

from nexus_node.errors import InvalidInput
from nexus_node.pipeline import tableformat
from nexus_node.pipeline.tableformat import CSV, PARQUET, TableFormat

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


_INFINITE = re.compile(r"^[-+]?inf(?:inity)?$", re.IGNORECASE)


def number(cell: str) -> float | None:
    """A stripped cell as a number the way training reads it (``pandas.to_numeric``, then
    :data:`_DECORATED`), infinite ones (``inf``, ``-Infinity``, ``1e400``) included; None
    for text."""
    if _PLAIN.match(cell) or _INFINITE.match(cell):
        return float(cell)
    m = _DECORATED.match(cell)
    if not m:
        return None
    return float(m["sign"] + m["num"].replace(",", ""))


def parse_number(cell: str) -> float | None:
    """A stripped cell as a finite number the way training parses it
    (``nexus_node.pipeline.profile.parse_numbers``), or None."""
    v = number(cell)
    return v if v is not None and math.isfinite(v) else None


def target_task(name: str, numeric: bool, distinct: int, integral: bool, example: str = "",
                infinite: int = 0, infinite_example: str = "") -> str:
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
        infinite: How many cells are infinite numbers (``inf``, ``-Infinity``, ``1e400``);
            they count neither as numbers nor as text.
        infinite_example: One of them, for the message.

    Returns:
        ``"regression"``, ``"binary"`` or ``"multiclass"``.

    Raises:
        InvalidInput: The target has infinite numbers, is constant, or is text with too many
            distinct values.
    """
    if numeric and infinite:
        raise InvalidInput(
            f"target column {name!r} holds {infinite} infinite value(s) such as {infinite_example!r} among its "
            "numbers: a model cannot learn to predict infinity; correct those cells, or empty them to leave "
            "their rows out")
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
    infinite: int = 0
    infinite_example: str = ""

    def add(self, cell: str) -> None:
        if cell in MISSING_MARKERS:
            return
        if not self.example:
            self.example = cell
        if len(self.texts) <= MAX_CLASSES:
            self.texts.add(cell)
        if self.numeric:
            v = number(cell)
            if v is None:
                self.numeric = False
            elif not math.isfinite(v):
                self.infinite += 1
                self.infinite_example = self.infinite_example or cell
            elif len(self.numbers) <= MAX_INTEGER_CLASSES:
                self.numbers.add(v)
                self.integral = self.integral and v.is_integer()

    def task(self, name: str) -> str:
        distinct = len(self.numbers) if self.numeric else len(self.texts)
        return target_task(name, self.numeric, distinct, self.integral, self.example, self.infinite,
                           self.infinite_example)


@dataclass(frozen=True)
class CsvSummary:
    encoding: str
    columns: list[str]
    rows: int
    target_present: int       # rows whose target is not a missing marker
    task: str = ""            # what preparation will decide: regression | binary | multiclass
    format: TableFormat = TableFormat()   # how the file is read (recorded on the job)


def detect_encoding(path: Path, compression: str | None = None) -> str:
    """The codec of a CSV file (gzip-compressed or not): UTF-16 after its byte-order mark;
    else UTF-8 (with or without BOM) if the whole file decodes; else Windows-1252 if it
    does; else latin-1, which decodes any byte.

    Raises:
        InvalidInput: a UTF-16 mark before bytes that are not UTF-16.
    """
    if compression is None:
        with open(path, "rb") as f:
            compression = tableformat.sniff(f.read(_SNIFF))[1]
    return _detect_encoding(lambda: tableformat.open_binary(path, compression))


def _detect_encoding(opener: Callable[[], IO[bytes]]) -> str:
    with opener() as f:
        head = f.read(4)
    return tableformat.choose_encoding(head, lambda codec: _decodes(opener, codec))


def _decodes(opener: Callable[[], IO[bytes]], encoding: str) -> bool:
    dec = codecs.getincrementaldecoder(encoding)()
    try:
        with opener() as f:
            while chunk := f.read(1 << 20):
                dec.decode(chunk)
        dec.decode(b"", final=True)
        return True
    except UnicodeDecodeError:
        return False


def check_columns(columns: list[str], target: str, drop_columns: Sequence[str], what: str = "the CSV") -> int:
    """Check a table's (stripped) header against the job's target and drop list.

    Args:
        what: How messages name the table.

    Returns:
        The target's column index.

    Raises:
        InvalidInput: with a message that says what to fix.
    """
    repeated = sorted({c for c in columns if c and columns.count(c) > 1})
    if repeated:
        raise InvalidInput(f"{what} repeats column names {repeated}; give every column a unique name")
    if len(columns) < 2:
        hint = (" (its header holds no comma, semicolon, tab or pipe)" if what == "the CSV" else "")
        raise InvalidInput(
            f"{what} has a single column{hint}: a table needs a target and at least one feature column"
        )
    if target not in columns:
        raise InvalidInput(f"target column {target!r} is not in {what}; columns are: {_preview(columns)}")
    drops = {c.strip() for c in drop_columns}
    missing_drops = [c for c in drop_columns if c.strip() not in columns]
    if missing_drops:
        raise InvalidInput(f"columns to drop {missing_drops} are not in {what}; columns are: {_preview(columns)}")
    if target in drops:
        raise InvalidInput(f"the target column {target!r} cannot also be dropped")
    if not set(columns) - {target} - drops:
        raise InvalidInput("dropping those columns leaves no feature column: keep at least one column "
                           "besides the target")
    return columns.index(target)


def is_present(cell: str) -> bool:
    """Whether a (stripped) target cell counts as a value for the row count at submit."""
    return cell.lower() not in MISSING


def summarize(target: str, columns: list[str], rows: int, present: int, scan: TargetScan,
              fmt: TableFormat, what: str = "the CSV") -> CsvSummary:
    """The summary of a table whose rows were counted and target scanned.

    Raises:
        InvalidInput: no rows, too few targets, or a target preparation would refuse.
    """
    if rows == 0:
        raise InvalidInput(f"{what} has a header but no data rows")
    if present == 0:
        raise InvalidInput(f"target column {target!r} is empty in every row: choose a column with values")
    if present < MIN_ROWS:
        raise InvalidInput(
            f"only {present} row(s) have a value for {target!r}: at least {MIN_ROWS} are needed "
            "to train, validate and test a model"
        )
    return CsvSummary(encoding=fmt.encoding, columns=columns, rows=rows, target_present=present,
                      task=scan.task(target), format=fmt)


def upload_container(path: Path) -> str:
    """``"csv"`` (gzip-compressed or not) or ``"parquet"``, from an upload's first bytes.

    Raises:
        InvalidInput: a format Nexus does not read (JSON, HTML, a workbook, binary data...).
    """
    with open(path, "rb") as f:
        head = f.read(_SNIFF)
    return tableformat.sniff(head, "the uploaded file")[0]


def check_csv(path: Path, target: str, drop_columns: Sequence[str] = (), max_bytes: int | None = None,
              limit_flag: str = "") -> CsvSummary:
    """Validate a CSV upload (gzip-compressed or not) for a job predicting ``target``, and
    detect how to read it: encoding, delimiter, decimal mark (:class:`TableFormat`).

    A Parquet upload is checked in a runner instead
    (:func:`nexus_node.pipeline.csvio.check_table`): reading it needs pyarrow.

    Args:
        max_bytes: The most bytes a gzip upload may decompress to.
        limit_flag: The node option that sets ``max_bytes`` (for the message).

    Raises:
        InvalidInput: with a message that says what to fix.
        TooLarge: a gzip upload decompresses past ``max_bytes``.
        ValueError: the file is Parquet.
    """
    source = "the uploaded file"
    size = path.stat().st_size
    if size == 0:
        raise InvalidInput("the uploaded file is empty: send a CSV file with a header row and data rows")
    with open(path, "rb") as f:
        head = f.read(_SNIFF)
    container, compression = tableformat.sniff(head, source)
    if container == PARQUET:
        raise ValueError("a Parquet upload is checked in a runner (nexus_node.pipeline.csvio.check_table)")

    def opener() -> IO[bytes]:
        return tableformat.open_binary(path, compression, max_bytes, source, limit_flag)

    if compression:
        with opener() as inner:
            head = inner.read(_SNIFF)
        if not head.strip():
            raise InvalidInput("the uploaded file is gzip-compressed but holds nothing: compress the CSV itself")
        tableformat.check_text_head(head, "the file inside the gzip upload")
    encoding = _detect_encoding(opener)
    target = target.strip()
    if not target:
        raise InvalidInput("no target column given: pass --target with the column to predict")
    with opener() as raw, io.TextIOWrapper(raw, encoding=encoding, newline="") as text:
        first = next((line for line in text if line.strip()), "")
    sep = tableformat.sniff_delimiter(first)
    with opener() as raw, io.TextIOWrapper(raw, encoding=encoding, newline="") as text:
        reader = csv.reader(text, delimiter=sep)
        try:
            header = next(reader, None)
        except csv.Error as e:
            raise InvalidInput(f"the file is not a readable CSV: {e}") from None
        if not header or not any(h.strip() for h in header):
            raise InvalidInput("the CSV has no header row: the first line must name the columns")
        columns = [h.strip() for h in header]
        ti = check_columns(columns, target, drop_columns)
        rows = present = bad = 0
        # A delimiter other than a comma leaves the decimal mark open until every cell is
        # seen: the target is scanned both ways, and the evidence decides which scan counts.
        open_mark = sep != ","
        scan, comma_scan, evidence = TargetScan(), TargetScan(), tableformat.DecimalEvidence()
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
                if is_present(cell):
                    present += 1
                scan.add(cell)
                if open_mark:
                    comma_scan.add(tableformat.to_plain(cell))
                    if not evidence.dot:   # one decimal point settles it: the plain reading
                        for c in row:
                            if "," in c or "." in c:
                                evidence.add(c.strip())
        except csv.Error as e:
            raise InvalidInput(f"the CSV cannot be parsed near row {rows + 1}: {e}") from None
    decimal = evidence.decide(sep)
    fmt = TableFormat(CSV, compression, encoding, sep, decimal)
    return summarize(target, columns, rows, present, comma_scan if decimal == "," else scan, fmt)


def _preview(columns: list[str], n: int = 12) -> str:
    shown = ", ".join(repr(c) for c in columns[:n])
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > n else "")

