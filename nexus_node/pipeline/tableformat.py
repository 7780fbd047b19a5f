"""What an uploaded table file is, told once from its bytes (stdlib only: the node runs it).

Nexus reads CSV text (UTF-8, UTF-16 with a byte-order mark, Windows-1252 or Latin-1;
comma-, semicolon-, tab- or pipe-separated; a decimal comma where the delimiter is not a
comma), optionally gzip-compressed, and Parquet. The node detects the format of an upload
once (:func:`sniff` for the container, :mod:`.csvcheck` for the text) and records it as a
:class:`TableFormat` on the job; every later read of that upload
(:func:`nexus_node.pipeline.csvio.read_table` in preparation) is given the record and reads
the file the same way. A prediction input is detected on its own, with the training
upload's decimal mark as the hint where its own cells leave the mark open.

Anything else (JSON, HTML, a spreadsheet workbook, an image...) is refused with an
:class:`~nexus_node.errors.InvalidInput` that says what the file looks like and what is read.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import os
import re
import zlib
from dataclasses import dataclass
from typing import IO, Callable, Mapping

from nexus_node.errors import InvalidInput, TooLarge

CSV, PARQUET = "csv", "parquet"
GZIP = "gzip"
DELIMITERS = (",", ";", "\t", "|")
DECIMALS = (".", ",")
#: Enough of a file to tell what it is without reading all of it.
SNIFF_BYTES = 1 << 16
#: What every refusal of a file's format ends with.
ACCEPTED = ("send CSV or TSV text (UTF-8, UTF-16 or Latin-1; comma-, semicolon-, tab- or pipe-separated, "
            "header row first), optionally gzip-compressed (.csv.gz), or a Parquet file")

_DELIMITER_NAMES = {";": "semicolon-separated", "\t": "tab-separated", "|": "pipe-separated"}


@dataclass(frozen=True)
class TableFormat:
    """How a table file is read.

    Attributes:
        container: ``"csv"`` (delimited text) or ``"parquet"``.
        compression: ``"gzip"`` or ``""`` (CSV only).
        encoding: The Python codec of the text (CSV only).
        delimiter: One of :data:`DELIMITERS` (CSV only).
        decimal: ``","`` when numbers are written with a decimal comma (CSV only).
    """

    container: str = CSV
    compression: str = ""
    encoding: str = ""
    delimiter: str = ","
    decimal: str = "."

    def to_dict(self) -> dict[str, str]:
        """The record kept on the job (JSON-safe, replicated)."""
        if self.container == PARQUET:
            return {"container": PARQUET}
        return {"container": CSV, "compression": self.compression, "encoding": self.encoding,
                "delimiter": self.delimiter, "decimal": self.decimal}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> TableFormat:
        """The format :meth:`to_dict` recorded.

        Raises:
            ValueError: an unknown container, compression, delimiter, decimal mark or codec.
        """
        container = str(d.get("container", CSV))
        if container == PARQUET:
            return cls(container=PARQUET)
        fmt = cls(CSV, str(d.get("compression", "")), str(d.get("encoding", "")), str(d.get("delimiter", ",")),
                  str(d.get("decimal", ".")))
        if (container != CSV or fmt.compression not in ("", GZIP) or fmt.delimiter not in DELIMITERS
                or fmt.decimal not in DECIMALS):
            raise ValueError(f"not a table format: {dict(d)!r}")
        if fmt.encoding:
            try:
                codecs.lookup(fmt.encoding)
            except LookupError:
                raise ValueError(f"unknown text encoding {fmt.encoding!r}") from None
        return fmt

    def describe(self) -> str:
        """In words, for the job's message: ``"cp1252 CSV, semicolon-separated, decimal comma"``."""
        if self.container == PARQUET:
            return "Parquet"
        parts = [("gzip-compressed " if self.compression == GZIP else "") + f"{self.encoding or 'text'} CSV"]
        if self.delimiter in _DELIMITER_NAMES:
            parts.append(_DELIMITER_NAMES[self.delimiter])
        if self.decimal == ",":
            parts.append("decimal comma")
        return ", ".join(parts)


# ---- the container, from the first bytes ------------------------------------------------------

# Formats people send by mistake, by their magic number: what the file is, and what to do.
_MAGIC: tuple[tuple[bytes, str, str], ...] = (
    (b"PK\x03\x04", "a zip archive or an Excel workbook (.xlsx)", "export the sheet as CSV, or "),
    (b"\xd0\xcf\x11\xe0", "an Excel 97-2003 workbook (.xls) or another Office file", "export the sheet as CSV, or "),
    (b"%PDF", "a PDF document", ""),
    (b"\x89PNG", "a PNG image", ""),
    (b"\xff\xd8\xff", "a JPEG image", ""),
    (b"GIF8", "a GIF image", ""),
    (b"BZh", "a bzip2 archive", "compress it with gzip instead, or "),
    (b"\xfd7zXZ\x00", "an xz archive", "compress it with gzip instead, or "),
    (b"\x28\xb5\x2f\xfd", "a zstd archive", "compress it with gzip instead, or "),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive", "compress it with gzip instead, or "),
    (b"SQLite format 3\x00", "an SQLite database", "export the table as CSV, or "),
)
_JSON_START = re.compile(r'^(?:\{\s*["}]|\[\s*[\[{"\]\d-])')
_MARKUP_START = re.compile(r"^<(?:!doctype|html|head|body|table|\?xml|!--|div|meta|script)\b", re.IGNORECASE)


def choose_encoding(head: bytes, decodes: Callable[[str], bool]) -> str:
    """The codec of a text file whose first bytes are ``head``; ``decodes(codec)`` says
    whether the whole file decodes with it. UTF-16 after its byte-order mark; else UTF-8
    (with or without its mark) if the file decodes so; else Windows-1252 if it does; else
    Latin-1, which decodes any byte. The one rule for the node's check and the runner's read.

    Raises:
        InvalidInput: a UTF-16 mark before bytes that are not UTF-16.
    """
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        if decodes("utf-16"):
            return "utf-16"
        raise InvalidInput("the file starts with a UTF-16 byte-order mark but is not valid UTF-16: save it "
                           "again as UTF-8 CSV or as Unicode text")
    for codec in ("utf-8-sig" if head.startswith(codecs.BOM_UTF8) else "utf-8", "cp1252"):
        if decodes(codec):
            return codec
    return "latin-1"

def sniff(head: bytes, source: str = "the file") -> tuple[str, str]:
    """The container and compression of a file from its first bytes (:data:`SNIFF_BYTES`).

    Returns:
        ``("csv", "gzip")`` for gzip (what it holds is checked once decompressed, with
        :func:`check_text_head`), ``("parquet", "")``, else ``("csv", "")``.

    Raises:
        InvalidInput: the bytes are a format Nexus does not read (JSON, HTML, a workbook,
            an image, binary data); the message says which and what is read.
    """
    if head.startswith(b"\x1f\x8b"):
        return CSV, GZIP
    if head.startswith(b"PAR1"):
        return PARQUET, ""
    check_text_head(head, source)
    return CSV, ""


def check_text_head(head: bytes, source: str = "the file") -> None:
    """Refuse ``head`` unless it can start a CSV text file.

    Raises:
        InvalidInput: what the file looks like instead, and what Nexus reads.
    """
    for magic, what, advice in _MAGIC:
        if head.startswith(magic):
            raise InvalidInput(f"{source} is {what}, not a CSV or Parquet table: {advice}{ACCEPTED}")
    if head.startswith(b"\x1f\x8b"):
        raise InvalidInput(f"{source} is gzip-compressed twice: decompress it once, then {ACCEPTED}")
    if head.startswith(b"PAR1"):
        raise InvalidInput(f"{source} is a gzip-compressed Parquet file: send the Parquet file itself "
                           "(it is compressed inside already)")
    utf16 = head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    if not utf16 and b"\x00" in head:
        if _looks_utf16(head):
            raise InvalidInput(f"{source} looks like UTF-16 text without a byte-order mark: save it as UTF-8 "
                               f"CSV or as Unicode text with its mark (Excel writes one); {ACCEPTED}")
        raise InvalidInput(f"{source} is binary data, not a CSV or Parquet table: {ACCEPTED}")
    text = _text_start(head, utf16)
    if _JSON_START.match(text):
        raise InvalidInput(f"{source} looks like JSON (it starts with {text[:12]!r}), not a CSV or Parquet "
                           f"table: {ACCEPTED}")
    if _MARKUP_START.match(text):
        raise InvalidInput(f"{source} looks like HTML or XML (it starts with {text[:15]!r}: a saved web "
                           f"page?), not a CSV or Parquet table: {ACCEPTED}")


def _looks_utf16(head: bytes) -> bool:
    """Mostly ASCII text written as UTF-16: every other byte is zero."""
    sample = head[:4096]
    even, odd = sample[0::2], sample[1::2]
    return max(even.count(0), odd.count(0)) > 0.8 * (len(sample) // 2) > 0


def _text_start(head: bytes, utf16: bool) -> str:
    """The first non-blank characters of ``head``, decoded leniently."""
    text = head[:512].decode("utf-16" if utf16 else "utf-8", errors="replace")
    return text.lstrip("\ufeff \t\r\n")


# ---- bytes, decompressed within a bound ---------------------------------------------------------

class _Limited(io.RawIOBase):
    """A gzip stream that stops with :class:`TooLarge` past ``limit`` decompressed bytes and
    turns a damaged stream into :class:`InvalidInput`."""

    def __init__(self, inner: io.BufferedIOBase, limit: int | None, source: str, limit_flag: str) -> None:
        self.inner, self.limit, self.source, self.limit_flag = inner, limit, source, limit_flag
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        try:
            data = self.inner.read(len(b))
        except (OSError, EOFError, zlib.error) as e:
            raise InvalidInput(f"{self.source} starts as gzip but does not decompress ({e}): compress the "
                               "CSV again, or send it uncompressed") from None
        self.count += len(data)
        if self.limit is not None and self.count > self.limit:
            flag = f" (the node's {self.limit_flag})" if self.limit_flag else ""
            raise TooLarge(f"{self.source} decompresses to more than this node's limit of "
                           f"{mib(self.limit)}{flag}: send a smaller table")
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self.inner.close()
        super().close()


def mib(n: int) -> str:
    """``n`` bytes in MiB, for messages: ``"512 MiB"``, ``"0.0954 MiB"``."""
    return f"{n / (1 << 20):.3g} MiB"


def open_binary(path: str | os.PathLike[str], compression: str = "", max_bytes: int | None = None,
                source: str = "the file", limit_flag: str = "") -> IO[bytes]:
    """The file's bytes, decompressed if ``compression`` is gzip, at most ``max_bytes`` of them.

    Raises (while reading):
        TooLarge: a gzip file that decompresses past ``max_bytes``.
        InvalidInput: a damaged gzip file.
    """
    if compression != GZIP:
        return open(path, "rb")
    return io.BufferedReader(_Limited(gzip.open(path, "rb"), max_bytes, source, limit_flag), 1 << 16)


def read_bytes(path: str | os.PathLike[str], compression: str = "", max_bytes: int | None = None,
               source: str = "the file", limit_flag: str = "") -> bytes:
    """The whole file through :func:`open_binary`."""
    with open_binary(path, compression, max_bytes, source, limit_flag) as f:
        return f.read()


# ---- the delimiter and the decimal mark -------------------------------------------------------

def sniff_delimiter(line: str) -> str:
    """The delimiter of a header line (the first non-blank line of ``line`` if it holds
    several): the candidate that splits it into the most cells, comma on a tie.

    The header alone decides because data rows may hold decimal commas or quoted text, while
    a header with two or more columns must contain its delimiter.
    """
    first = next((x for x in line.splitlines() if x.strip()), "")
    try:
        cells = {d: len(next(csv.reader([first], delimiter=d))) for d in DELIMITERS}
    except (csv.Error, StopIteration):
        return ","
    best = max(DELIMITERS, key=lambda d: (cells[d], d == ","))
    return best if cells[best] > 1 else ","


_PRE, _POST = r"(?P<pre>[-+]?[$€£¥]?\s*)", r"(?P<post>\s*%?)"
# A number written with a decimal comma: "2,5", "-0,25", ",5", "1.234,56" (dots group
# thousands), "1,5E+03", "12,5 %", "€ 3,50".
_COMMA_DECIMAL = re.compile(_PRE + r"(?P<int>\d{1,3}(?:\.\d{3})+|\d*),(?P<frac>\d+)(?P<exp>[eE][-+]?\d+)?" + _POST + "$",
                            re.ASCII)
# Shaped like thousands in groups of three: "1,234" and "1.234" read either way, so they
# decide nothing (a plain reading takes the comma as grouping, the dot as decimal).
_COMMA_GROUPED = re.compile(r"[-+]?[$€£¥]?\s*\d{1,3}(?:,\d{3})+\s*%?$", re.ASCII)
_DOT_GROUPED = re.compile(r"[-+]?[$€£¥]?\s*\d{1,3}(?:\.\d{3})+\s*%?$", re.ASCII)
# A number written with a decimal point: "2.5", ".5", "2.5e3", "1,234.5".
_DOT_DECIMAL = re.compile(r"[-+]?[$€£¥]?\s*(?:\d{1,3}(?:,\d{3})+|\d*)\.\d+(?:[eE][-+]?\d+)?\s*%?$", re.ASCII)


def decimal_mark(cell: str) -> str:
    """``","`` for a (stripped) cell that is a number only with a decimal comma, ``"."``
    for one only with a decimal point, ``""`` for any other (text, whole numbers, and the
    ambiguous ``"1,234"`` and ``"1.234"``)."""
    if "," in cell:
        if _COMMA_GROUPED.match(cell):
            return ""
        if _COMMA_DECIMAL.match(cell):
            return ","
        return "." if _DOT_DECIMAL.match(cell) else ""
    if "." in cell and not _DOT_GROUPED.match(cell) and _DOT_DECIMAL.match(cell):
        return "."
    return ""


@dataclass
class DecimalEvidence:
    """How many cells wrote a number with each decimal mark (:func:`decimal_mark`)."""

    comma: int = 0
    dot: int = 0

    def add(self, cell: str) -> None:
        mark = decimal_mark(cell)
        if mark == ",":
            self.comma += 1
        elif mark == ".":
            self.dot += 1

    def decide(self, delimiter: str, hint: str = "") -> str:
        """The decimal mark of a table with this delimiter.

        A decimal comma only where the delimiter is not a comma, some cell needs it and no
        cell writes a decimal point. Where no cell tells (only whole numbers, or only the
        ambiguous ``1,234`` shape), ``hint`` (the training upload's mark, for a prediction
        input) decides, else the plain reading.
        """
        if delimiter == "," or self.dot:
            return "."
        if self.comma:
            return ","
        return "," if hint == "," else "."


def to_plain(cell: str) -> str:
    """A cell of a decimal-comma table with its numbers in the plain form the rest of the
    pipeline parses (``"1.234,5"`` -> ``"1234.5"``, ``"1.234"`` -> ``"1234"``); any other
    cell unchanged."""
    if "," in cell:
        m = _COMMA_DECIMAL.match(cell)
        if m:
            return f"{m['pre']}{m['int'].replace('.', '')}.{m['frac']}{m['exp'] or ''}{m['post']}"
        return cell
    if "." in cell and _DOT_GROUPED.match(cell):
        return cell.replace(".", "")
    return cell
