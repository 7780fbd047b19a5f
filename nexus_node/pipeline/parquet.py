"""Read a Parquet file as the text-cell frame :mod:`.csvio` makes of a CSV (runner side:
needs pyarrow, which only a runner imports).

Each typed column is written as the text a CSV export of it would hold, so profiling,
preparation and prediction treat a Parquet table and the same table as CSV alike: whole
numbers as ``"3"``, other numbers in their shortest exact form, booleans ``"True"`` and
``"False"``, dates ``"2020-01-31"``, times of day ``"2020-01-31 08:15:00"`` (whole seconds;
a zone-aware time in UTC), nulls and NaN missing. Nested values (lists, records, maps) become
their text, which profiling then drops or keeps as it would any text.

Size: a Parquet file is compressed, and its strings are often dictionary-encoded (one copy
of a value for many rows). Before anything is decoded the footer's figures are held to the
node's limit: the column data uncompressed at most ``max_bytes``, and at most
``max_bytes / 2`` cells (what a CSV of ``max_bytes`` can hold). Strings are read
dictionary-encoded and each distinct value becomes one Python string shared by its rows, so
a value repeated a million times is not copied a million times.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd

from nexus_node.errors import FailedPrecondition, InvalidInput, TooLarge
from nexus_node.pipeline.csvio import finish_cells
from nexus_node.pipeline.tableformat import mib


def read_parquet(path: str | os.PathLike[str], max_bytes: int | None = None, limit_flag: str = "",
                 source: str = "the file") -> pd.DataFrame:
    """The Parquet file at ``path`` as stripped text cells, missing cells ``NA``.

    Raises:
        InvalidInput: the file is not readable Parquet, or has no rows or columns.
        TooLarge: its columns hold more than ``max_bytes`` (see the module docstring).
        FailedPrecondition: pyarrow is not installed on this node.
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise FailedPrecondition("this node cannot read Parquet: pyarrow is not installed "
                                 "(pip install 'nexus-node[parquet]'); send the table as CSV") from None
    try:
        pf = pq.ParquetFile(path)
        md = pf.metadata
        schema = pf.schema_arrow
    except (pa.ArrowException, OSError, ValueError) as e:
        raise InvalidInput(f"{source} starts as Parquet but cannot be read ({str(e).strip()}): write it again, "
                           "or send the table as CSV") from None
    uncompressed = sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
    cells = md.num_rows * md.num_columns
    if max_bytes is not None and (uncompressed > max_bytes or cells > max_bytes // 2):
        flag = f" (the node's {limit_flag})" if limit_flag else ""
        raise TooLarge(f"{source} holds {md.num_rows:,} rows of {md.num_columns} columns ({mib(uncompressed)} "
                       f"uncompressed), more than this node's limit of {mib(max_bytes)}{flag}: send a smaller table")
    if md.num_columns == 0:
        raise InvalidInput(f"{source} has no columns; send a table with a header row")
    # pandas writes an unnamed index as a column "__index_level_0__"; it is not data.
    pandas_meta = (schema.pandas_metadata or {}) if schema.metadata else {}
    index = {c for c in pandas_meta.get("index_columns") or [] if isinstance(c, str)}
    names = [n for n in schema.names if not (n in index and n.startswith("__index_level_"))]
    text_like = [n for n in names if _is_text(pa, schema.field(n).type)]
    try:
        table = pq.read_table(path, columns=names, read_dictionary=text_like)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise InvalidInput(f"{source} is damaged Parquet ({str(e).strip()}): write it again, or send the table "
                           "as CSV") from None
    columns = {}
    for i, name in enumerate(table.column_names):
        chunks = [_text(pa, c, name, source) for c in table.column(i).chunks]
        columns[i] = np.concatenate(chunks) if chunks else np.array([], dtype=object)
    df = pd.DataFrame({i: pd.Series(v, dtype="str") for i, v in columns.items()})
    df.columns = [str(n) for n in table.column_names]
    dupes = sorted({n.strip() for n in df.columns if n.strip() and [c.strip() for c in df.columns].count(n.strip()) > 1})
    if dupes:
        raise InvalidInput(f"{source} repeats column names {dupes}; give every column a unique name")
    return finish_cells(df, source)


def _is_text(pa: Any, t: Any) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
                or pa.types.is_large_binary(t))


def _text(pa: Any, arr: Any, name: str, source: str) -> np.ndarray:
    """One Arrow array as an object array of ``str`` (``None`` where null)."""
    import pyarrow.compute as pc

    t = arr.type
    if pa.types.is_dictionary(t):
        values = _text(pa, arr.dictionary, name, source)
        idx = arr.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        out = np.full(len(arr), None, dtype=object)
        ok = idx >= 0
        out[ok] = values[idx[ok]]
        return out
    if pa.types.is_null(t):
        return np.full(len(arr), None, dtype=object)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        try:
            arr = pc.cast(arr, pa.string())
        except pa.ArrowInvalid:
            raise InvalidInput(f"column {name!r} of {source} holds binary data that is not UTF-8 text: "
                               "leave it out of the file, or store it as text") from None
        t = arr.type
    if pa.types.is_boolean(t):
        out = np.full(len(arr), None, dtype=object)
        values = arr.fill_null(False).to_numpy(zero_copy_only=False)
        valid = arr.is_valid().to_numpy(zero_copy_only=False)
        out[valid & values] = "True"
        out[valid & ~values] = "False"
        return out
    if pa.types.is_timestamp(t):
        seconds = pc.cast(arr, pa.timestamp("s"), safe=False)   # a zone-aware time: its UTC
        since_midnight = pc.cast(seconds, pa.int64()).to_numpy(zero_copy_only=False)
        valid = seconds.is_valid().to_numpy(zero_copy_only=False)
        whole_days = bool(np.all(np.asarray(since_midnight, dtype="float64")[valid] % 86400 == 0))
        arr = pc.strftime(seconds, format="%Y-%m-%d" if whole_days else "%Y-%m-%d %H:%M:%S")
        t = arr.type
    if pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t) or pa.types.is_date(t) \
            or pa.types.is_time(t) or pa.types.is_string(t) or pa.types.is_large_string(t):
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            arr = pc.cast(arr, pa.string())
        return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=object)
    # Nested and other types (lists, records, maps, durations): their text, one cell at a time.
    return np.array([None if v is None else str(v) for v in arr.to_pylist()], dtype=object)
