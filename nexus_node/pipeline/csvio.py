"""Read a user's table file (CSV text or Parquet) as a table of stripped text cells.

Every cell stays text here (missing cells are ``NA``); deciding which columns are numbers,
dates or categories is :mod:`.profile`'s job. Keeping the raw text means the same typing
rules run at training and at prediction time, so a value such as ``"007"`` in a category
column means the same thing in both. A Parquet file's typed columns are written as the
text a CSV export holds (:mod:`.parquet`), and a decimal-comma table's numbers are rewritten
with a decimal point, so the rest of the pipeline sees one kind of table.

What the file is (container, compression, encoding, delimiter, decimal mark) is a
:class:`~nexus_node.pipeline.tableformat.TableFormat`: detected here when not given, and
given when the node recorded it at submit, so every read of one upload is the same.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
from typing import Any, Iterator, Sequence

import pandas as pd

from nexus_node.errors import InvalidInput
from nexus_node.pipeline import tableformat
from nexus_node.pipeline.csvcheck import MISSING_MARKERS, CsvSummary, TargetScan, check_columns, is_present, summarize
from nexus_node.pipeline.tableformat import CSV, PARQUET, SNIFF_BYTES, TableFormat, sniff_delimiter

# MISSING_MARKERS: the cells that mean "no value". Deliberately short: "None" or "n/a"-like
# words can be real categories, and pandas' much longer default list would silently swallow
# them. Defined with the node's upload check (stdlib only), which decides the target's task
# at submit on the same cells.

__all__ = ["check_table", "decode_bytes", "finish_cells", "parse_text", "read_table", "read_table_chunks",
           "sniff_delimiter"]

#: Rows per chunk when a table is read a chunk at a time (:func:`read_table_chunks`): what a
#: reader holds of the file is one chunk's cells, and at most :data:`CHUNK_CELLS` of them.
CHUNK_ROWS = 50_000
CHUNK_CELLS = 1_000_000


def decode_bytes(data: bytes, encoding: str | None = None, source: str = "the file") -> tuple[str, str]:
    """Decode a file's bytes, detecting the encoding when none is given.

    Order: a UTF-16 or UTF-8 byte-order mark, then strict UTF-8, then strict Windows-1252,
    then Latin-1 (which decodes any byte string, so the chain always ends).

    Args:
        data: The whole file (decompressed).
        encoding: A Python codec name recorded earlier; skips detection.
        source: How messages name the file.

    Returns:
        ``(text, encoding)`` with the codec name that decoded it.

    Raises:
        InvalidInput: The bytes are not CSV text (binary, JSON, HTML...) or do not decode
            with ``encoding``.
    """
    if encoding:
        try:
            return data.decode(encoding), encoding
        except (UnicodeDecodeError, LookupError) as e:
            raise InvalidInput(f"{source} does not decode as {encoding}: {e}") from None
    if not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        tableformat.check_text_head(data[:SNIFF_BYTES], source)
    decoded: dict[str, str] = {}

    def decodes(codec: str) -> bool:
        try:
            decoded[codec] = data.decode(codec)
            return True
        except UnicodeDecodeError:
            return False

    codec = tableformat.choose_encoding(data[:4], decodes)
    return (decoded[codec] if codec in decoded else data.decode(codec)), codec


def parse_text(text: str, *, source: str = "the file", delimiter: str | None = None,
               decimal: str | None = None, hint_decimal: str = "") -> pd.DataFrame:
    """Parse CSV text into a frame of stripped text cells, missing markers as ``NA``.

    Args:
        text: The decoded file.
        source: How messages name the file.
        delimiter: The recorded delimiter; sniffed from the header when ``None``.
        decimal: The recorded decimal mark; detected from the cells when ``None``.
        hint_decimal: The mark to take where detection finds no cell that tells.

    Returns:
        A frame with one ``str`` column per header cell, in file order; with a decimal
        comma, its numbers are rewritten with a decimal point.

    Raises:
        InvalidInput: Empty text, a header without rows, rows that do not parse, or header
            names that collide once whitespace is stripped.
    """
    return _parse(text, source, delimiter, decimal, hint_decimal)[0]


def _parse(text: str, source: str, delimiter: str | None, decimal: str | None,
           hint_decimal: str) -> tuple[pd.DataFrame, str, str]:
    """:func:`parse_text`, and the delimiter and decimal mark it read with."""
    if not text.strip():
        raise InvalidInput(f"{source} is empty; upload a CSV with a header row and data rows")
    sep = delimiter or sniff_delimiter(text)
    # pandas renames a repeated header ("a", "a.1") without a word; read it ourselves.
    header = [c.strip() for c in next(csv.reader(io.StringIO(text.lstrip()), delimiter=sep), [])]
    dupes = sorted({n for n in header if n and header.count(n) > 1})
    if dupes:
        raise InvalidInput(f"{source} repeats column names {dupes}; give every column a unique name")
    with _csv_errors(source):
        df = pd.read_csv(io.StringIO(text), sep=sep, **_CSV_OPTIONS)
    df = finish_cells(df, source)
    if decimal is None:
        decimal = _decimal_evidence(df).decide(sep, hint_decimal) if sep != "," else "."
    if decimal == ",":
        _rewrite_decimal_commas(df)
    return df, sep, decimal


def finish_cells(df: pd.DataFrame, source: str = "the file") -> pd.DataFrame:
    """Strip every cell and header name, mark missing cells ``NA``: what every reader
    (CSV or Parquet) does last.

    Raises:
        InvalidInput: The frame has no rows.
    """
    names = [str(c).strip() for c in df.columns]
    df.columns = names
    if len(df) == 0:
        raise InvalidInput(f"{source} has a header but no data rows; add rows below the header")
    for name in names:
        s = df[name].astype("str").str.strip()
        df[name] = s.where(~s.isin(MISSING_MARKERS) & s.notna(), other=pd.NA).astype("str")
    return df


def _candidates(s: pd.Series) -> list[str]:
    """The distinct cells of a column that hold a comma or a dot (the only ones a decimal
    mark can concern)."""
    return [str(c) for c in s[s.str.contains(r"[,.]", regex=True, na=False)].unique()]


def _decimal_evidence(df: pd.DataFrame) -> tableformat.DecimalEvidence:
    evidence = tableformat.DecimalEvidence()
    for name in df.columns:
        for cell in _candidates(df[name]):
            evidence.add(cell)
        if evidence.dot:   # one decimal point settles it: the plain reading
            break
    return evidence


def _rewrite_decimal_commas(df: pd.DataFrame) -> None:
    for name in df.columns:
        mapping = {c: p for c in _candidates(df[name]) if (p := tableformat.to_plain(c)) != c}
        if mapping:
            df[name] = df[name].replace(mapping)


def read_table(path: str | os.PathLike[str], fmt: TableFormat | None = None, *, hint: TableFormat | None = None,
               max_bytes: int | None = None, limit_flag: str = "",
               source: str = "the file") -> tuple[pd.DataFrame, TableFormat]:
    """Read a table file (CSV text, gzip-compressed or not, or Parquet) as text cells.

    Args:
        path: The file.
        fmt: The format recorded by an earlier check of the same file (preparation reads
            the upload as the node checked it); detected when ``None``.
        hint: Another file's format (a prediction input gets its model's training upload):
            its decimal mark decides where this file's own cells do not.
        max_bytes: The most bytes a compressed file may expand to (a Parquet file: about
            that much text).
        limit_flag: The node option that sets ``max_bytes`` (for the message).
        source: How messages name the file.

    Returns:
        ``(frame, format)``.

    Raises:
        InvalidInput: Anything about the file that stops it being a usable table.
        TooLarge: The file expands past ``max_bytes``.
    """
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if not head.strip():
        raise InvalidInput(f"{source} is empty; upload a CSV with a header row and data rows")
    if fmt is None:
        container, compression = tableformat.sniff(head, source)
    else:
        container, compression = fmt.container, fmt.compression
    if container == PARQUET:
        from nexus_node.pipeline.parquet import read_parquet

        return read_parquet(path, max_bytes, limit_flag, source), TableFormat(PARQUET)
    data = tableformat.read_bytes(path, compression, max_bytes, source, limit_flag)
    if not data.strip():
        raise InvalidInput(f"{source} is empty; upload a CSV with a header row and data rows")
    text, encoding = decode_bytes(data, fmt.encoding if fmt else None, source)
    del data
    df, sep, decimal = _parse(text, source, fmt.delimiter if fmt else None, fmt.decimal if fmt else None,
                              hint.decimal if hint else "")
    return df, TableFormat(CSV, compression, encoding, sep, decimal)


def read_table_chunks(path: str | os.PathLike[str], fmt: TableFormat, rows: int = CHUNK_ROWS,
                      source: str = "the file") -> Iterator[pd.DataFrame]:
    """:func:`read_table`'s frame read with the format recorded at submit, ``rows`` rows at a
    time: the same cells (stripped, missing ones ``NA``, decimal commas rewritten), without
    the whole file in memory. A Parquet file comes as one chunk (its columns are read whole).

    Raises (while reading):
        InvalidInput: as :func:`read_table`, for what a chunk meets.
    """
    if fmt.container == PARQUET:
        from nexus_node.pipeline.parquet import read_parquet

        frame = read_parquet(path, None, "", source)
        rows = _chunk_rows(rows, len(frame.columns))
        for start in range(0, len(frame), rows):   # what a reader of the chunks holds at once beside it
            yield frame.iloc[start:start + rows].reset_index(drop=True)
        return
    encoding = fmt.encoding
    if not encoding:
        from pathlib import Path

        from nexus_node.pipeline.csvcheck import detect_encoding

        encoding = detect_encoding(Path(path), fmt.compression)
    with tableformat.open_binary(path, fmt.compression, None, source) as raw:
        try:
            header = _header(io.TextIOWrapper(raw, encoding=encoding, newline=""), fmt.delimiter)
        except UnicodeDecodeError as e:
            raise InvalidInput(f"{source} does not decode as {encoding}: {e}") from None
    dupes = sorted({n for n in header if n and header.count(n) > 1})
    if dupes:
        raise InvalidInput(f"{source} repeats column names {dupes}; give every column a unique name")
    rows = _chunk_rows(rows, len(header))
    with tableformat.open_binary(path, fmt.compression, None, source) as raw:
        text = io.TextIOWrapper(raw, encoding=encoding, newline="")
        first = True
        try:
            with _csv_errors(source):
                reader = pd.read_csv(text, sep=fmt.delimiter, chunksize=rows, **_CSV_OPTIONS)
                chunks = iter(reader)
            while True:
                with _csv_errors(source):
                    chunk = next(chunks, None)
                if chunk is None:
                    break
                chunk = finish_cells(chunk, source)
                if fmt.decimal == ",":
                    _rewrite_decimal_commas(chunk)
                first = False
                yield chunk
        except UnicodeDecodeError as e:
            raise InvalidInput(f"{source} does not decode as {encoding}: {e}") from None
        if first:
            raise InvalidInput(f"{source} has a header but no data rows; add rows below the header")


#: How every CSV is parsed: cells as text, none read as missing by pandas (finish_cells decides).
_CSV_OPTIONS: dict[str, Any] = dict(dtype=str, keep_default_na=False, na_filter=False, skipinitialspace=True,
                                    engine="c")


@contextlib.contextmanager
def _csv_errors(source: str) -> Iterator[None]:
    """pandas' parse errors as what to fix."""
    try:
        yield
    except UnicodeDecodeError:
        raise
    except (pd.errors.ParserError, csv.Error, ValueError) as e:
        raise InvalidInput(
            f"{source} is not a readable CSV ({str(e).strip()}); check that every row has the "
            "same number of fields and that values containing the delimiter are quoted"
        ) from None
    except pd.errors.EmptyDataError:
        raise InvalidInput(f"{source} has no columns; upload a CSV with a header row") from None


def _chunk_rows(rows: int, columns: int) -> int:
    """``rows``, or fewer for a wide table: a chunk holds at most :data:`CHUNK_CELLS` cells."""
    return max(256, min(rows, CHUNK_CELLS // max(1, columns)))


def _header(text: io.TextIOBase, sep: str) -> list[str]:
    """The header's cells (stripped): the first line that is not blank."""
    for line in text:
        if line.strip():
            return [c.strip() for c in next(csv.reader([line], delimiter=sep), [])]
    return []


def check_table(path: str | os.PathLike[str], target: str, drop_columns: Sequence[str] = (),
                max_bytes: int | None = None, limit_flag: str = "") -> CsvSummary:
    """The submit checks of :func:`nexus_node.pipeline.csvcheck.check_csv` on a file the node
    cannot read itself (Parquet: the node does not import pyarrow), run in a runner.

    Raises:
        InvalidInput: with a message that says what to fix.
        TooLarge: the file expands past ``max_bytes``.
    """
    source = "the uploaded file"
    target = target.strip()
    if not target:
        raise InvalidInput("no target column given: pass --target with the column to predict")
    df, fmt = read_table(path, max_bytes=max_bytes, limit_flag=limit_flag, source=source)
    what = "the Parquet file" if fmt.container == PARQUET else "the CSV"
    columns = [str(c) for c in df.columns]
    check_columns(columns, target, drop_columns, what)
    scan, present = TargetScan(), 0
    for cell in df[target].fillna("").tolist():
        present += is_present(cell)
        scan.add(cell)
    return summarize(target, columns, len(df), present, scan, fmt, what)
