"""Path completion for inputs (Textual's suggester) and reading a CSV header."""

from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

from textual.suggester import Suggester


class PathSuggester(Suggester):
    """Suggests the first file or directory that completes what was typed (``~`` expands);
    directories end with a slash so the next completion continues inside them."""

    def __init__(self, suffix: str | tuple[str, ...] = "") -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.suffix = suffix

    async def get_suggestion(self, value: str) -> str | None:
        if not value:
            return None
        expanded = os.path.expanduser(value)
        directory, prefix = os.path.split(expanded)
        try:
            entries = sorted(os.scandir(directory or "."), key=lambda e: e.name)
        except OSError:
            return None
        for entry in entries:
            if not entry.name.startswith(prefix) or entry.name == prefix or entry.name.startswith("."):
                continue
            is_dir = entry.is_dir()
            if not is_dir and self.suffix and not entry.name.endswith(self.suffix):
                continue
            return value + entry.name[len(prefix):] + ("/" if is_dir else "")
        return None


#: The field separators the node sniffs (pipeline/tableformat.py), in its order of preference.
DELIMITERS = ",;\t|"


def csv_header(path: str) -> list[str] | None:
    """The column names of a table file the node accepts, or None if it is not a readable file
    with a header row: a CSV (comma, semicolon, tab or pipe separated; UTF-8, UTF-16 with a
    BOM, Windows-1252 or Latin-1), the same gzip-compressed (``.gz``), or Parquet (its schema,
    read with pyarrow when the ``parquet`` extra is installed). Only the header is read; the
    node checks the rest when the job is submitted."""
    p = Path(os.path.expanduser(path))
    if not p.is_file():
        return None
    try:
        with open(p, "rb") as f:
            head = f.read(4)
        if head == b"PAR1":
            return _parquet_columns(p)
        opener = gzip.open if head[:2] == b"\x1f\x8b" else open
        with opener(p, "rb") as f:
            first = f.read(64 << 10)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    line = _first_line(first)
    if line is None:
        return None
    counts = {d: line.count(d) for d in DELIMITERS}
    delimiter = max(DELIMITERS, key=lambda d: (counts[d], -DELIMITERS.index(d)))
    try:
        row = next(csv.reader([line], delimiter=delimiter), None)
    except csv.Error:
        return None
    names = [c.strip() for c in row or [] if c.strip()]
    return names or None


def _first_line(data: bytes) -> str | None:
    """The first line of a file's first bytes, decoded as the node decodes it."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        candidates: tuple[str, ...] = ("utf-16",)
    else:
        candidates = ("utf-8-sig", "cp1252", "latin-1")
    for encoding in candidates:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            # The read may have cut a character in two: retry without its last bytes.
            try:
                text = data[:-4].decode(encoding) if len(data) > 4 else ""
            except UnicodeDecodeError:
                continue
        lines = text.splitlines()
        return lines[0] if lines else None
    return None


def _parquet_columns(path: Path) -> list[str] | None:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        return None   # the node reads it; without pyarrow here the columns cannot be listed
    try:
        return list(pq.read_schema(path).names) or None
    except (OSError, ValueError):
        return None
