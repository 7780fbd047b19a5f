"""The arrays a runner trains on, loaded once and reused by the slot's next tasks.

A runner is long-lived and runs one task at a time, so these caches need no locks; each is
a small LRU, so a runner that serves many datasets does not grow without bound. Arrays are
memory-mapped (``np.load(mmap_mode="r")``): the page cache, not the runner, holds the data.

A trial whose rows would take more than :data:`STREAM_SHARE` of the room left in its memory
budget (the runner's ``--trial-memory-mb``; :func:`.memory.room`) does not copy them to the
device: a network streams them from the prepared files
(:class:`~nexus_node.pipeline.train.StreamedData`), trees train on a sample that fits
(:func:`tree_splits`).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Hashable, Mapping, Sequence, TypeVar, Union

import numpy as np

from nexus_node.errors import FailedPrecondition
from nexus_node.pipeline import target as target_scale
from nexus_node.pipeline import target_encoding
from nexus_node.pipeline.folds import fold_splits
from nexus_node.pipeline.row_stream import ConcatRows, NpyRows, Rows, RowSource, sample_rows
from nexus_node.runner import memory

if TYPE_CHECKING:
    from nexus_node.pipeline.train import Data

V = TypeVar("V")
TRAIN_ARRAYS = ("X_train", "y_train", "X_val", "y_val")


class LRU(OrderedDict):
    """A small least-recently-used map: reused runners must not grow without bound."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_or_make(self, key: Hashable, make: Callable[[], V]) -> V:
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        while len(self) > self.size:
            self.popitem(last=False)
        return value


_arrays = LRU(16)
_splits = LRU(2)
_encoded = LRU(2)
_device_data = LRU(2)
_streamed = LRU(8)   # the first trial's choice, kept for the dataset: see :func:`streams`
_tree_rows = LRU(8)  # the first tree trial's sample size, kept for the dataset: see :func:`tree_splits`

#: Fewer training rows than this fitting a trial's budget fail the trial rather than train
#: trees on next to nothing.
MIN_SAMPLED_ROWS = 1000

#: The share of the room left in a trial's memory budget its rows may take; past it, they
#: stream (a network) or are sampled (trees).
STREAM_SHARE = 0.5


#: A prepared array: one ``.npy`` file, or its row shards in order (prepare names them
#: ``NAME#0``, ``NAME#1``...: :func:`.pipeline.prepare.shard_name`; :func:`group_shards`).
Entry = Union[str, Sequence[str]]


def group_shards(files: Mapping[str, Any]) -> dict[str, Entry]:
    """A task's ``files`` with each array's row shards gathered under its name, in order."""
    out: dict[str, Any] = {}
    shards: dict[str, list[tuple[int, str]]] = {}
    for name, path in files.items():
        base, sep, k = name.partition("#")
        if sep and k.isdigit():
            shards.setdefault(base, []).append((int(k), str(path)))
        else:
            out[name] = path
    for base, parts in shards.items():
        out[base] = [p for _, p in sorted(parts)]
    return out


def file_key(entry: Entry) -> tuple:
    """A cache key that changes when a file of ``entry`` is rewritten."""
    if not isinstance(entry, str):
        return tuple(file_key(p) for p in entry)
    st = os.stat(entry)
    return entry, st.st_mtime_ns, st.st_size


def load_array(entry: Entry) -> np.ndarray:
    """A memory-mapped array, cached by file identity; an array in row shards is joined in
    memory (only rows a trial holds anyway are joined: see :func:`streams`)."""
    if not isinstance(entry, str):
        if len(entry) == 1:
            return load_array(entry[0])
        return np.concatenate([load_array(p) for p in entry])
    return _arrays.get_or_make(file_key(entry), lambda: np.load(entry, mmap_mode="r", allow_pickle=False))


def array_shape(entry: Entry) -> tuple[int, ...]:
    """The shape of a prepared array, read from its files' headers."""
    if isinstance(entry, str):
        return tuple(load_array(entry).shape)
    shapes = [array_shape(p) for p in entry]
    return (sum(s[0] for s in shapes),) + shapes[0][1:]


def rows_of(entry: Entry) -> Rows:
    """A prepared array's rows, read a block at a time from its file or shards."""
    return NpyRows(entry) if isinstance(entry, str) else ConcatRows([NpyRows(p) for p in entry])


class _Arrays(Mapping[str, np.ndarray]):
    """Arrays by name, each loaded when first read (a finalize that streams reads only the
    targets of those it names)."""

    def __init__(self, files: Mapping[str, Entry]) -> None:
        self._files = {k: v for k, v in files.items() if k.startswith(("X_", "y_"))}
        self._loaded: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._loaded:
            self._loaded[name] = load_array(self._files[name])
        return self._loaded[name]

    def __iter__(self) -> Any:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


def load_arrays(files: Mapping[str, Entry]) -> Mapping[str, np.ndarray]:
    """Every ``X_*``/``y_*`` array named in a prepare result's ``files`` (memory-mapped; read
    when first asked for)."""
    return _Arrays(files)


def tree_columns(files: Mapping[str, Entry]) -> np.ndarray | None:
    """The tree family's feature indices; None (every feature) for arrays prepared before
    prepare wrote them."""
    return np.asarray(load_array(files["tree_columns"])) if "tree_columns" in files else None


#: The category codes a target encoding reads, when prepare wrote them (older prepared
#: jobs have none: their configurations train on the one-hot encoding).
CODE_ARRAYS = ("codes_train", "codes_val")


def _split_arrays(files: Mapping[str, Entry]) -> tuple[str, ...]:
    return TRAIN_ARRAYS + tuple(k for k in CODE_ARRAYS if k in files)


def split_key(files: Mapping[str, Entry]) -> tuple:
    return tuple(file_key(files[k]) for k in _split_arrays(files) + (("folds",) if "folds" in files else ()))


def splits_for(files: Mapping[str, Entry]) -> list[dict[str, np.ndarray]]:
    """What a trial validates on: the folds of a cross-validated table (prepare wrote
    ``folds``: :mod:`nexus_node.pipeline.folds`), else the one train/validation split;
    built once per dataset and reused by later trials."""
    return _splits.get_or_make(split_key(files), lambda: fold_splits(
        {k: load_array(files[k]) for k in _split_arrays(files)},
        load_array(files["folds"]) if "folds" in files else None))


def encoding_of(files: Mapping[str, Entry], params: Mapping[str, object] | None) -> str:
    """The category encoding a configuration trains with on these arrays: its choice, or
    ``"onehot"`` where prepare wrote no codes."""
    choice = target_encoding.choice(params)
    return choice if "codes_layout" in files else "onehot"


def encoded_splits(files: Mapping[str, Entry], task: str, n_classes: int, encoding: str = "onehot",
                   log: bool | None = None) -> list[dict[str, np.ndarray]]:
    """:func:`splits_for` as a configuration with this ``encoding`` trains on them: with
    ``"target"``, every split target-encoded on its own training rows
    (:func:`~nexus_node.pipeline.target_encoding.encode_split`; a regression target on the
    scale ``log`` chooses); built once per dataset and choice."""
    if encoding == "onehot":
        return splits_for(files)
    layout = np.asarray(load_array(files["codes_layout"]))

    def encode(split: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        transform = target_scale.fit_target_transform(split["y_train"], log) if task == "regression" else None
        return target_encoding.encode_split(split, layout, task, n_classes, transform)[0]

    return _encoded.get_or_make((split_key(files), task, n_classes, log), lambda: [
        encode(split) for split in splits_for(files)])


def model_tree_columns(files: Mapping[str, Entry], task: str, n_classes: int, encoding: str) -> np.ndarray | None:
    """:func:`tree_columns` as indices of what a configuration with this ``encoding`` trains
    on (the target-encoded features last)."""
    cols = tree_columns(files)
    if encoding == "onehot":
        return cols
    n_features = int(array_shape(files["X_train"])[1])
    layout = np.asarray(load_array(files["codes_layout"]))
    return target_encoding.model_columns(np.arange(n_features) if cols is None else cols, n_features, layout,
                                         [target_encoding.width(task, n_classes)] * layout.shape[0])


def model_bytes(files: Mapping[str, Entry], task: str, n_classes: int, encoding: str) -> int:
    """Bytes the training and validation rows take as a configuration with this
    ``encoding`` trains on them (float32 model inputs)."""
    rows = array_shape(files["X_train"])[0] + array_shape(files["X_val"])[0]
    return 4 * _width(files, task, n_classes, encoding) * int(rows)


def streams(files: Mapping[str, Entry], task: str, n_classes: int, encoding: str) -> bool:
    """Whether a trial on these arrays streams its rows: they would take more than
    :data:`STREAM_SHARE` of the room left in its budget. Decided by the dataset's first
    trial and kept: a later trial's room is measured with the first one's rows already
    held. A cross-validated table (a few thousand rows) never streams."""
    def decide() -> bool:
        room = memory.room()
        return (room is not None and "folds" not in files
                and held_bytes(model_bytes(files, task, n_classes, encoding), encoding) > STREAM_SHARE * room)

    return _streamed.get_or_make((split_key(files), task, n_classes, encoding, memory.budget()), decide)


def data_for(files: Mapping[str, Entry], task: str, n_classes: int, log: bool | None = None,
             encoding: str = "onehot") -> "list[Data]":
    """What an MLP trial trains on, built once per dataset (and regression target scale:
    ``log`` is the configuration's choice; and category ``encoding``) and reused by later
    trials: every split of :func:`encoded_splits` as tensors on the device, or the one split
    streamed from the prepared files when it is too large for the trial's budget
    (:func:`streams`)."""
    from nexus_node.pipeline.train import DeviceData, pick_device

    streamed = streams(files, task, n_classes, encoding)
    key = (split_key(files), task, n_classes, str(pick_device()), log, encoding, streamed)
    if streamed:
        return _device_data.get_or_make(key, lambda: [streamed_split(files, task, n_classes, log, encoding)])
    return _device_data.get_or_make(key, lambda: [
        DeviceData.from_arrays(split, task, n_classes, log=log)
        for split in encoded_splits(files, task, n_classes, encoding, log)])


def streamed_split(files: Mapping[str, Entry], task: str, n_classes: int, log: bool | None,
                   encoding: str) -> "Data":
    """The train/validation split as rows read from the prepared files while training; a
    target encoding is fitted on the training rows' codes and targets (small beside the
    inputs) and applied a block at a time."""
    from nexus_node.pipeline.train import StreamedData

    train, val, transform = _sources(files, task, n_classes, log, encoding)
    return StreamedData.from_sources(train, val, task, n_classes, transform=transform,
                                     window_bytes=window_bytes(memory.budget()))


def window_bytes(budget: int) -> int:
    """A streamed epoch's window for a trial with ``budget`` bytes: a sixteenth of it (two
    windows are held), between 1 and 16 MiB. Of the budget, not of the room left, so that
    a seed gives the same windows (and result) in every trial of the runner."""
    from nexus_node.pipeline.train import STREAM_WINDOW_BYTES

    return max(1 << 20, min(STREAM_WINDOW_BYTES, budget // 16))


def _sources(files: Mapping[str, Entry], task: str, n_classes: int, log: bool | None,
             encoding: str) -> tuple[RowSource, RowSource, dict[str, Any] | None]:
    """The training and validation rows as a configuration with this ``encoding`` trains
    on them, read a block at a time; and the regression target scale (``log``: the
    configuration's choice) a target encoding was fitted with."""
    y_train = load_array(files["y_train"])
    transform = target_scale.fit_target_transform(np.asarray(y_train), log) if task == "regression" else None
    train, other, _ = fit_sources(files, ("train",), task, n_classes, transform, encoding)
    return train, other("val"), transform


def fit_sources(files: Mapping[str, Entry], splits: tuple[str, ...], task: str, n_classes: int,
                transform: Mapping[str, Any] | None,
                encoding: str) -> tuple[RowSource, Callable[[str], RowSource], list[target_encoding.Table]]:
    """The rows of ``splits``, one after another, as a fit with this ``encoding`` trains on
    them, read a block at a time; the rows of any other split as that fit reads them; and
    the mappings of a target encoding fitted on the fit's rows (``transform``: the
    regression target scale it encodes with; none for the one-hot encoding). The targets
    are held (one number a row), the inputs are not."""
    parts = [rows_of(files[f"X_{s}"]) for s in splits]
    X = parts[0] if len(parts) == 1 else ConcatRows([p for part in parts for p in _files_of(part)])
    ys = [load_array(files[f"y_{s}"]) for s in splits]
    y = ys[0] if len(ys) == 1 else np.concatenate([np.asarray(v) for v in ys])
    if encoding == "onehot":
        return RowSource(X, y), lambda s: RowSource(rows_of(files[f"X_{s}"]), load_array(files[f"y_{s}"])), []
    layout = np.asarray(load_array(files["codes_layout"]))
    codes = np.concatenate([np.asarray(load_array(files[f"codes_{s}"])) for s in splits])
    fit_rows, tables = target_encoding.fit_block_transform(y, codes, layout, task, n_classes, transform)
    width = target_encoding.model_width(int(X.shape[1]), layout, task, n_classes)

    def other(s: str) -> RowSource:
        rows = target_encoding.apply_block_transform(load_array(files[f"codes_{s}"]), tables, layout)
        return RowSource(rows_of(files[f"X_{s}"]), load_array(files[f"y_{s}"]), rows, width)

    return RowSource(X, y, fit_rows, width), other, tables


def streams_final(files: Mapping[str, Entry], task: str, n_classes: int, encoding: str) -> bool:
    """Whether finalize's fits stream their rows: every split's rows would take more than
    :data:`STREAM_SHARE` of the room the runner's budget leaves (finalize is sized by the
    trials' budget, though only trials are held to it)."""
    room = memory.room()
    if room is None:
        return False
    rows = sum(int(array_shape(files[f"X_{s}"])[0]) for s in ("train", "val", "test"))
    return held_bytes(4 * _width(files, task, n_classes, encoding) * rows, encoding) > STREAM_SHARE * room


def held_bytes(rows_bytes: int, encoding: str) -> int:
    """What rows of ``rows_bytes`` (as a model reads them) cost held in memory: a target
    encoding keeps its encoded copy beside the tensors made from it."""
    return rows_bytes * (1 if encoding == "onehot" else 2)


def _width(files: Mapping[str, Entry], task: str, n_classes: int, encoding: str) -> int:
    width = int(array_shape(files["X_train"])[1])
    if encoding != "onehot":
        width = target_encoding.model_width(width, np.asarray(load_array(files["codes_layout"])), task, n_classes)
    return width


def tree_row_bytes(width: int, n_columns: int, outputs: int) -> int:
    """Bytes a boosted-tree fit holds per training row: the row (``width`` float32 inputs),
    the ``n_columns`` it splits on copied out (float32), validated (scikit-learn copies them
    to float64) and binned (one byte), and per output its gradient, hessian and raw
    prediction."""
    return 4 * width + 13 * n_columns + 24 * outputs + 16


def tree_splits(files: Mapping[str, Entry], task: str, n_classes: int, encoding: str,
                log: bool | None) -> tuple[list[dict[str, Any]], int | None]:
    """What a tree trial trains on, and how many training rows that is (None: all of them).

    :func:`encoded_splits`, unless the training rows would take more than
    :data:`STREAM_SHARE` of the room left in the trial's budget once scikit-learn is loaded
    (:func:`tree_row_bytes`): then a seeded
    sample of them that fits (the same rows for every trial of the job, so that their scores
    compare), with the validation rows left on disk and scored a chunk at a time (a
    :class:`~nexus_node.pipeline.row_stream.RowSource`), so the trial's predictions cover
    every validation row as any other trial's do.
    """
    n_train, width = int(array_shape(files["X_train"])[0]), _width(files, task, n_classes, encoding)
    columns = model_tree_columns(files, task, n_classes, encoding)
    n_columns = width if columns is None else len(columns)
    per_row = tree_row_bytes(width, n_columns, target_encoding.width(task, n_classes))

    def decide() -> int | None:
        if memory.budget() > 0:
            from nexus_node.pipeline.gbt import load_library

            load_library()   # its import is the trial's, and the room is what is left after it
        room = memory.room()
        if room is None or "folds" in files or n_train * per_row <= STREAM_SHARE * room:
            return None
        return int(STREAM_SHARE * max(0, room) // per_row)

    # The first tree trial decides for the dataset: later ones have more room (scikit-learn
    # is loaded), and a different size would be a different sample.
    keep = _tree_rows.get_or_make((split_key(files), task, n_classes, encoding, memory.budget()), decide)
    if keep is None:
        return encoded_splits(files, task, n_classes, encoding, log), None
    if keep < MIN_SAMPLED_ROWS:
        raise FailedPrecondition(
            f"the trial's memory budget of {memory.budget() >> 20} MB leaves room for {keep} of the {n_train} "
            f"training rows; trees need at least {MIN_SAMPLED_ROWS} (give trials more with nexus-node "
            "--trial-memory-mb)")
    train, val, _ = _sources(files, task, n_classes, log, encoding)
    rows = sample_rows(n_train, keep, labels=None if task == "regression" else np.asarray(train.y))
    split = {"X_train": train.take(rows), "y_train": np.asarray(train.y[rows]), "X_val": val,
             "y_val": np.asarray(val.y)}
    return [split], int(rows.size)


def _files_of(rows: Rows) -> list[NpyRows]:
    return [rows] if isinstance(rows, NpyRows) else list(rows.parts)
