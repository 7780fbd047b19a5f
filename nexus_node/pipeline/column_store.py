"""A table's text cells kept on disk a column per file, so that preparation holds one column
at a time instead of the whole table (issue 24: data bigger than a node).

Preparation reads the upload a chunk of rows at a time (:func:`.csvio.read_table_chunks`) and
appends each chunk here; profiling and fitting then ask for one column at a time
(:class:`LazyTable`, which reads as a frame to the functions that take one). A column is two
files: the cells' text one after another (UTF-8), and each cell's length in characters (-1
for a missing cell); a column is read back by decoding its text once and slicing it. Local scratch of the runner, never sent anywhere.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd


class ColumnStore:
    """Text cells appended a chunk of rows at a time, read back a column at a time."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.columns: list[str] = []
        self.rows = 0

    def _paths(self, i: int) -> tuple[Path, Path]:
        return self.directory / f"{i}.cells", self.directory / f"{i}.lengths"

    def append(self, chunk: pd.DataFrame) -> None:
        """Adds ``chunk``'s rows (the same columns, in the same order, every time)."""
        names = [str(c) for c in chunk.columns]
        if not self.columns:
            self.columns = names
        elif names != self.columns:
            raise ValueError(f"a chunk with columns {names} after chunks with {self.columns}")
        for i, name in enumerate(names):
            s = chunk[name]
            missing = s.isna().to_numpy()
            texts = s.where(~missing, "").astype(str).tolist()
            lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
            lengths[missing] = -1
            cells, sizes = self._paths(i)
            with open(cells, "ab") as f:
                f.write("".join(texts).encode("utf-8"))
            with open(sizes, "ab") as f:
                f.write(lengths.tobytes())
        self.rows += len(chunk)

    def column(self, name: str) -> pd.Series:
        """Every row's cell of column ``name`` (text, missing cells NA), as the chunks held it."""
        cells, sizes = self._paths(self.columns.index(name))
        lengths = np.fromfile(sizes, dtype=np.int64)
        text = cells.read_bytes().decode("utf-8")
        ends = np.cumsum(np.maximum(lengths, 0))
        starts = ends - np.maximum(lengths, 0)
        values: list[str | None] = [text[a:b] for a, b in zip(starts.tolist(), ends.tolist())]
        for i in np.flatnonzero(lengths < 0).tolist():
            values[i] = None
        return pd.Series(values, name=name, dtype="str")


class LazyTable:
    """Rows of a :class:`ColumnStore` read as a frame of text cells by what takes one
    (``columns``, ``len``, ``table[name]``; :meth:`take` for ``frame.iloc[positions]``): a
    column is read from disk when asked for, and the last two asked for are kept (fitting
    asks for the same column twice in a row).

    Args:
        store: The cells.
        rows: The store's rows this table holds, in order (all when None).
        labels: The rows' index labels (``0..len-1`` when None): as a frame filtered and
            renumbered, then selected by position, would label them.
    """

    def __init__(self, store: ColumnStore, rows: np.ndarray | None = None, labels: np.ndarray | None = None) -> None:
        self.store, self.rows, self.labels = store, rows, labels
        self._recent: OrderedDict[str, pd.Series] = OrderedDict()

    @property
    def columns(self) -> Sequence[str]:
        return self.store.columns

    def __len__(self) -> int:
        return self.store.rows if self.rows is None else int(self.rows.size)

    def __getitem__(self, name: str) -> pd.Series:
        if name in self._recent:
            self._recent.move_to_end(name)
            return self._recent[name]
        s = self.store.column(name)
        if self.rows is not None:
            s = s.iloc[self.rows]
        s.index = pd.RangeIndex(len(s)) if self.labels is None else pd.Index(self.labels)
        self._recent[name] = s
        while len(self._recent) > 2:
            self._recent.popitem(last=False)
        return s

    def forget(self) -> None:
        """Drops the columns kept from the last reads."""
        self._recent.clear()

    def take(self, positions: np.ndarray) -> "LazyTable":
        """Rows at ``positions`` of this table, labelled by those positions (as
        ``frame.iloc[positions]`` of a frame numbered from 0)."""
        positions = np.asarray(positions, dtype=np.int64)
        return LazyTable(self.store, positions if self.rows is None else self.rows[positions], positions)
