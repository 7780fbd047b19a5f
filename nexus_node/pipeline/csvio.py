"""Read a user's CSV file as a table of stripped text cells.

Every cell stays text here (missing cells are ``NA``); deciding which columns are numbers,
dates or categories is :mod:`.profile`'s job. Keeping the raw text means the same typing
rules run at training and at prediction time, so a value such as ``"007"`` in a category
column means the same thing in both.
"""

from __future__ import annotations

import csv
import io
import os

import pandas as pd

from nexus_node.errors import InvalidInput
from nexus_node.pipeline.csvcheck import MISSING_MARKERS

# MISSING_MARKERS: the cells that mean "no value". Deliberately short: "None" or "n/a"-like
# words can be real categories, and pandas' much longer default list would silently swallow
# them. Defined with the node's upload check (stdlib only), which decides the target's task
# at submit on the same cells.
_DELIMITERS = (",", ";", "\t", "|")
# Enough of the file to tell text from binary without reading all of it twice.
_SNIFF_BYTES = 64 * 1024


def decode_bytes(data: bytes, encoding: str | None = None) -> tuple[str, str]:
    """Decode a file's bytes, detecting the encoding when none is given.

    Order: a UTF-16 or UTF-8 byte-order mark, then strict UTF-8, then strict Windows-1252,
    then Latin-1 (which decodes any byte string, so the chain always ends).

    Args:
        data: The whole file.
        encoding: A Python codec name recorded earlier; skips detection.

    Returns:
        ``(text, encoding)`` with the codec name that decoded it.

    Raises:
        InvalidInput: The bytes are binary (not text) or do not decode with ``encoding``.
    """
    if encoding is not None:
        try:
            return data.decode(encoding), encoding
        except (UnicodeDecodeError, LookupError) as e:
            raise InvalidInput(f"the file does not decode as {encoding}: {e}") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            raise InvalidInput("the file starts with a UTF-16 mark but is not valid UTF-16; "
                               "save it as UTF-8 CSV") from None
    head = data[:_SNIFF_BYTES]
    if head.startswith(b"PK\x03\x04"):
        raise InvalidInput("the file is a zip archive or an Excel workbook, not a CSV; "
                           "export the sheet as CSV (comma-separated, header row first)")
    if b"\x00" in head:
        raise InvalidInput("the file is binary, not a CSV text file; export your data as "
                           "CSV (comma-separated, header row first)")
    if data.startswith(b"\xef\xbb\xbf"):
        return data.decode("utf-8-sig", errors="strict"), "utf-8-sig"
    for codec in ("utf-8", "cp1252"):
        try:
            return data.decode(codec), codec
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1"), "latin-1"


def sniff_delimiter(text: str) -> str:
    """The delimiter of the header line: the candidate it contains most, comma on a tie.

    The header alone decides because data rows may hold decimal commas or quoted text, while
    a header with two or more columns must contain its delimiter.
    """
    first = next((line for line in text.splitlines() if line.strip()), "")
    try:
        cells = {d: len(next(csv.reader([first], delimiter=d))) for d in _DELIMITERS}
    except csv.Error:
        return ","
    best = max(_DELIMITERS, key=lambda d: (cells[d], d == ","))
    return best if cells[best] > 1 else ","


def parse_text(text: str, *, source: str = "the file") -> pd.DataFrame:
    """Parse CSV text into a frame of stripped text cells, missing markers as ``NA``.

    Args:
        text: The decoded file.
        source: How messages name the file.

    Returns:
        A frame with one ``str`` column per header cell, in file order.

    Raises:
        InvalidInput: Empty text, a header without rows, rows that do not parse, or header
            names that collide once whitespace is stripped.
    """
    if not text.strip():
        raise InvalidInput(f"{source} is empty; upload a CSV with a header row and data rows")
    sep = sniff_delimiter(text)
    # pandas renames a repeated header ("a", "a.1") without a word; read it ourselves.
    header = [c.strip() for c in next(csv.reader(io.StringIO(text.lstrip()), delimiter=sep), [])]
    dupes = sorted({n for n in header if n and header.count(n) > 1})
    if dupes:
        raise InvalidInput(f"{source} repeats column names {dupes}; give every column a unique name")
    try:
        df = pd.read_csv(
            io.StringIO(text), sep=sep, dtype=str, keep_default_na=False,
            na_filter=False, skipinitialspace=True, engine="c",
        )
    except (pd.errors.ParserError, csv.Error, ValueError) as e:
        raise InvalidInput(
            f"{source} is not a readable CSV ({str(e).strip()}); check that every row has the "
            "same number of fields and that values containing commas are quoted"
        ) from None
    except pd.errors.EmptyDataError:
        raise InvalidInput(f"{source} has no columns; upload a CSV with a header row") from None
    names = [str(c).strip() for c in df.columns]
    df.columns = names
    if len(df) == 0:
        raise InvalidInput(f"{source} has a header but no data rows; add rows below the header")
    for name in names:
        s = df[name].astype("str").str.strip()
        df[name] = s.where(~s.isin(MISSING_MARKERS) & s.notna(), other=pd.NA).astype("str")
    return df


def read_table(path: str | os.PathLike[str], encoding: str | None = None) -> tuple[pd.DataFrame, str]:
    """Read a CSV file as text cells.

    Args:
        path: The file.
        encoding: A codec recorded by an earlier read (prediction reuses training's); detected
            when ``None``.

    Returns:
        ``(frame, encoding)``.

    Raises:
        InvalidInput: Anything about the file that stops it being a usable CSV.
    """
    with open(path, "rb") as f:
        data = f.read()
    if not data.strip():
        raise InvalidInput("the file is empty; upload a CSV with a header row and data rows")
    text, used = decode_bytes(data, encoding)
    return parse_text(text), used
