"""The arrays a runner trains on, loaded once and reused by the slot's next tasks.

A runner is long-lived and runs one task at a time, so these caches need no locks; each is
a small LRU, so a runner that serves many datasets does not grow without bound. Arrays are
memory-mapped (``np.load(mmap_mode="r")``): the page cache, not the runner, holds the data.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import TYPE_CHECKING, Callable, Hashable, Mapping, TypeVar

import numpy as np

from nexus_node.pipeline import target as target_scale
from nexus_node.pipeline import target_encoding
from nexus_node.pipeline.folds import fold_splits

if TYPE_CHECKING:
    from nexus_node.pipeline.train import DeviceData

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


def file_key(path: str) -> tuple[str, int, int]:
    """A cache key that changes when the file at ``path`` is rewritten."""
    st = os.stat(path)
    return path, st.st_mtime_ns, st.st_size


def load_array(path: str) -> np.ndarray:
    """A memory-mapped array, cached by file identity."""
    return _arrays.get_or_make(file_key(path), lambda: np.load(path, mmap_mode="r", allow_pickle=False))


def load_arrays(files: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Every ``X_*``/``y_*`` array named in a prepare result's ``files`` (memory-mapped)."""
    return {k: load_array(v) for k, v in files.items() if k.startswith(("X_", "y_"))}


def tree_columns(files: Mapping[str, str]) -> np.ndarray | None:
    """The tree family's feature indices; None (every feature) for arrays prepared before
    prepare wrote them."""
    return np.asarray(load_array(files["tree_columns"])) if "tree_columns" in files else None


#: The category codes a target encoding reads, when prepare wrote them (older prepared
#: jobs have none: their configurations train on the one-hot encoding).
CODE_ARRAYS = ("codes_train", "codes_val")


def _split_arrays(files: Mapping[str, str]) -> tuple[str, ...]:
    return TRAIN_ARRAYS + tuple(k for k in CODE_ARRAYS if k in files)


def split_key(files: Mapping[str, str]) -> tuple:
    return tuple(file_key(files[k]) for k in _split_arrays(files) + (("folds",) if "folds" in files else ()))


def splits_for(files: Mapping[str, str]) -> list[dict[str, np.ndarray]]:
    """What a trial validates on: the folds of a cross-validated table (prepare wrote
    ``folds``: :mod:`nexus_node.pipeline.folds`), else the one train/validation split;
    built once per dataset and reused by later trials."""
    return _splits.get_or_make(split_key(files), lambda: fold_splits(
        {k: load_array(files[k]) for k in _split_arrays(files)},
        load_array(files["folds"]) if "folds" in files else None))


def encoding_of(files: Mapping[str, str], params: Mapping[str, object] | None) -> str:
    """The category encoding a configuration trains with on these arrays: its choice, or
    ``"onehot"`` where prepare wrote no codes."""
    choice = target_encoding.choice(params)
    return choice if "codes_layout" in files else "onehot"


def encoded_splits(files: Mapping[str, str], task: str, n_classes: int, encoding: str = "onehot",
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


def model_tree_columns(files: Mapping[str, str], task: str, n_classes: int, encoding: str) -> np.ndarray | None:
    """:func:`tree_columns` as indices of what a configuration with this ``encoding`` trains
    on (the target-encoded features last)."""
    cols = tree_columns(files)
    if encoding == "onehot":
        return cols
    n_features = int(load_array(files["X_train"]).shape[1])
    layout = np.asarray(load_array(files["codes_layout"]))
    return target_encoding.model_columns(np.arange(n_features) if cols is None else cols, n_features, layout,
                                         [target_encoding.width(task, n_classes)] * layout.shape[0])


def data_for(files: Mapping[str, str], task: str, n_classes: int, log: bool | None = None,
             encoding: str = "onehot") -> list[DeviceData]:
    """Training tensors of every split of :func:`encoded_splits` on the device, built once
    per dataset (and regression target scale: ``log`` is the configuration's choice; and
    category ``encoding``) and reused by later trials."""
    from nexus_node.pipeline.train import DeviceData, pick_device

    key = (split_key(files), task, n_classes, str(pick_device()), log, encoding)
    return _device_data.get_or_make(key, lambda: [
        DeviceData.from_arrays(split, task, n_classes, log=log)
        for split in encoded_splits(files, task, n_classes, encoding, log)])
