"""Rows of prepared arrays read a block at a time, for data larger than a trial's memory.

A prepared ``.npy`` array is read with ``pread`` into buffers of our own, never mapped: pages
of a mapping touched by a pass over the file would count in the process's resident memory
until the kernel reclaims them, while a read leaves them in the page cache, shared and
droppable. What a reader holds is the block it returns.

numpy only, so the tree family uses it without torch.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Iterator, Sequence, Union

import numpy as np

#: Bytes of rows one read takes (a window of training rows is several such blocks).
BLOCK_BYTES = 4 << 20


class NpyRows:
    """Rows ``[start, stop)`` of a C-ordered ``.npy`` file (1-D or 2-D), read on demand.

    Reads are positional (``os.preadv``), so one reader serves several threads.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._fd = -1
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran and len(shape) > 1:
            raise ValueError(f"{self.path} is stored in Fortran order; rows are not contiguous")
        if len(shape) not in (1, 2) or dtype.hasobject:
            raise ValueError(f"{self.path} holds a {len(shape)}-D {dtype} array; rows need a 1-D or 2-D number array")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = dtype
        self.row_bytes = dtype.itemsize * (shape[1] if len(shape) == 2 else 1)
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        """A new array of rows ``[start, stop)`` (clipped to the array)."""
        start, stop = max(0, start), min(stop, self.shape[0])
        out = np.empty((max(0, stop - start),) + self.shape[1:], dtype=self.dtype)
        if out.size == 0:
            return out
        view = memoryview(out.data).cast("B")
        done, where = 0, self.offset + start * self.row_bytes
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], where + done)
            if got == 0:
                raise ValueError(f"{self.path} ends before row {stop}: the file is shorter than its header says")
            done += got
        return out

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


class ConcatRows:
    """The rows of several :class:`NpyRows` of one width, one file after another (a final
    fit on the train, validation and test splits reads all three)."""

    def __init__(self, parts: Sequence[NpyRows]) -> None:
        if not parts or len({(p.shape[1:], p.dtype) for p in parts}) != 1:
            raise ValueError("rows to join need one width and type: "
                             f"{[(p.path, p.shape, str(p.dtype)) for p in parts]}")
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape: tuple[int, ...] = (int(self.starts[-1]),) + parts[0].shape[1:]
        self.dtype, self.row_bytes = parts[0].dtype, parts[0].row_bytes

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        """A new array of rows ``[start, stop)`` (clipped), across files as needed."""
        start, stop = max(0, start), min(stop, self.shape[0])
        pieces = [p.read(start - a, stop - a) for p, a, b in zip(self.parts, self.starts[:-1], self.starts[1:])
                  if start < b and stop > a]
        if not pieces:
            return np.empty((0,) + self.shape[1:], dtype=self.dtype)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


#: What a :class:`RowSource` reads its inputs from.
Rows = Union[NpyRows, ConcatRows]


class NpyWriter:
    """An ``.npy`` file of a shape known in advance, written a block of rows at a time in
    order (never mapped: what the writer holds is the block it is given)."""

    def __init__(self, path: str | os.PathLike[str], dtype: np.dtype | type, shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.shape = os.fspath(path), np.dtype(dtype), tuple(int(n) for n in shape)
        self.rows = 0
        self._f = open(self.path, "wb")
        np.lib.format.write_array_header_1_0(self._f, {
            "descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape})

    def write(self, block: np.ndarray) -> None:
        """Appends ``block``'s rows (its other dimensions must be the file's)."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.shape[1:] or self.rows + block.shape[0] > self.shape[0]:
            raise ValueError(f"rows of shape {block.shape} do not fit {self.path}: {self.rows} of {self.shape} written")
        self._f.write(block.tobytes())
        self.rows += block.shape[0]

    def abandon(self) -> None:
        """Closes the file whatever it holds (a failed preparation removes it)."""
        self._f.close()

    def close(self) -> None:
        """Closes the file, which must hold all its rows by now."""
        self._f.close()
        if self.rows != self.shape[0]:
            raise ValueError(f"{self.path} got {self.rows} of its {self.shape[0]} rows")


def block_rows(row_bytes: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Rows of ``row_bytes`` in one block of about ``block_bytes``."""
    return max(1, block_bytes // max(1, row_bytes))


#: A block's model inputs from its prepared rows and their position ``[start, stop)``
#: (a target encoding puts each row's encodings in place of its one-hot features).
BlockTransform = Callable[[np.ndarray, int, int], np.ndarray]


class RowSource:
    """The rows a model trains on or is scored on: inputs read in blocks from a prepared
    array, targets beside them.

    Args:
        X: The prepared inputs.
        y: The targets (small beside ``X``: one number a row), in memory or mapped.
        transform: Turns a block of prepared rows into model inputs (None: as prepared).
        n_features: The model's input width (``X``'s own when there is no ``transform``).
    """

    def __init__(self, X: Rows, y: np.ndarray, transform: BlockTransform | None = None,
                 n_features: int | None = None) -> None:
        if len(y) != len(X):
            raise ValueError(f"{len(X)} rows of inputs but {len(y)} targets")
        self.X, self.y, self.transform = X, y, transform
        self.n_features = int(n_features if n_features is not None else (X.shape[1] if len(X.shape) == 2 else 1))

    def __len__(self) -> int:
        return len(self.X)

    @property
    def row_bytes(self) -> int:
        """Bytes of one row of model inputs (float32)."""
        return 4 * self.n_features

    def inputs(self, start: int, stop: int) -> np.ndarray:
        """Model inputs of rows ``[start, stop)``, float32."""
        block = self.X.read(start, stop)
        if self.transform is not None:
            block = self.transform(block, start, start + block.shape[0])
        return np.asarray(block, dtype=np.float32)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Model inputs of the rows at sorted positions ``rows``, read in one pass of
        blocks: only the result and one block are held."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.size, self.n_features), dtype=np.float32)
        step, filled = block_rows(self.X.row_bytes), 0
        for start in range(0, len(self), step):
            lo, hi = np.searchsorted(rows, [start, start + step])
            if hi > lo:
                out[filled:filled + hi - lo] = self.inputs(start, start + step)[rows[lo:hi] - start]
                filled += hi - lo
        return out

    def chunks(self, rows: int) -> Iterator[np.ndarray]:
        """Model inputs of every row in order, ``rows`` at a time."""
        for start in range(0, len(self), rows):
            yield self.inputs(start, start + rows)


def block_order(n_rows: int, rows_per_block: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Every block ``[start, stop)`` of ``n_rows`` rows, in a random order."""
    n_blocks = max(1, math.ceil(n_rows / rows_per_block))
    return [(int(b) * rows_per_block, min(n_rows, (int(b) + 1) * rows_per_block)) for b in rng.permutation(n_blocks)]


def windows(blocks: Sequence[tuple[int, int]], per_window: int) -> list[list[tuple[int, int]]]:
    """``blocks`` in groups of ``per_window`` (the last may be shorter)."""
    return [list(blocks[i:i + per_window]) for i in range(0, len(blocks), per_window)]


#: A sample stratified by class keeps at least this many rows of each class (all of a rarer
#: one), so a model trained on it knows every class.
MIN_CLASS_ROWS = 20


def sample_rows(n_rows: int, keep: int, seed: int = 0, labels: np.ndarray | None = None) -> np.ndarray:
    """Sorted positions of about ``keep`` of ``n_rows`` rows drawn without replacement (all
    of them when ``keep >= n_rows``); with class ``labels``, drawn within each class in
    proportion, at least :data:`MIN_CLASS_ROWS` of each. Seeded: every trial of a job trains
    on the same rows, so their scores compare."""
    if keep >= n_rows:
        return np.arange(n_rows, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(n_rows, size=max(1, keep), replace=False)).astype(np.int64)
    labels = np.asarray(labels)
    parts = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = min(members.size, max(MIN_CLASS_ROWS, round(keep * members.size / n_rows)))
        parts.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(parts)).astype(np.int64)
