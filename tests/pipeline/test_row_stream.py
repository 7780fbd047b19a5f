"""Rows streamed from prepared files (issue 24, out-of-core training): what a streamed trial
reads is exactly what an in-memory trial holds, every row once an epoch, and a network and
trees trained that way learn what they learn in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from nexus_node.errors import FailedPrecondition
from nexus_node.pipeline import metrics
from nexus_node.pipeline.gbt import train_and_score_gbt
from nexus_node.pipeline.row_stream import NpyRows, RowSource, block_order, sample_rows, windows
from nexus_node.pipeline.train import DeviceData, StreamedData, train_and_score
from nexus_node.runner import arrays, memory
from tests.pipeline.helpers import prepare

GBT = {"family": "gbt", "learning_rate": 0.1, "max_iter": 30, "max_leaf_nodes": 15,
       "min_samples_leaf": 10, "l2_regularization": 0.1}
MLP = {"n_layers": 2, "width": 64, "activation": "relu", "dropout": 0.0, "learning_rate": 1e-3,
       "weight_decay": 0.0, "batch_size": 256, "epochs": 3}


@pytest.fixture(autouse=True)
def no_budget() -> Iterator[None]:
    yield
    memory.set_budget(0)
    arrays._device_data.clear()
    arrays._streamed.clear()
    arrays._tree_rows.clear()


def _save(path: Path, a: np.ndarray, version: tuple[int, int] | None = None) -> str:
    with open(path, "wb") as f:
        np.lib.format.write_array(f, a, version=version, allow_pickle=False)
    return str(path)


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_rows_read_are_the_array_s_rows(tmp_path, version):
    X = np.arange(7000 * 3, dtype=np.float32).reshape(7000, 3)
    y = np.arange(7000, dtype=np.int64)
    rx, ry = NpyRows(_save(tmp_path / "X.npy", X, version)), NpyRows(_save(tmp_path / "y.npy", y, version))
    assert len(rx) == 7000 and rx.shape == (7000, 3) and ry.shape == (7000,)
    for a, b in ((0, 1), (10, 4010), (6990, 9000), (7000, 7001)):
        np.testing.assert_array_equal(rx.read(a, b), X[a:b])
        np.testing.assert_array_equal(ry.read(a, b), y[a:b])
    rows = sample_rows(7000, 500, seed=3)
    assert rows.size == 500 and np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(RowSource(rx, y).take(rows), X[rows])
    np.testing.assert_array_equal(np.concatenate(list(RowSource(rx, y).chunks(999))), X)
    np.testing.assert_array_equal(sample_rows(7000, 500, seed=3), rows)     # every trial samples alike
    assert sample_rows(10, 50).tolist() == list(range(10))


def test_files_rows_cannot_be_read_from_are_refused(tmp_path):
    with pytest.raises(ValueError, match="Fortran order"):
        NpyRows(_save(tmp_path / "f.npy", np.asfortranarray(np.ones((4, 3), dtype=np.float32))))
    with pytest.raises(ValueError, match="3-D"):
        NpyRows(_save(tmp_path / "c.npy", np.ones((2, 2, 2), dtype=np.float32)))
    path = _save(tmp_path / "t.npy", np.ones((100, 3), dtype=np.float32))
    Path(path).write_bytes(Path(path).read_bytes()[:-40])
    with pytest.raises(ValueError, match="ends before row 100"):
        NpyRows(path).read(0, 100)
    with pytest.raises(ValueError, match="100 rows of inputs but 99 targets"):
        RowSource(NpyRows(path), np.zeros(99))


def test_an_epoch_s_windows_cover_every_row_once_in_a_new_order_each_epoch():
    rng = np.random.default_rng(0)
    first = windows(block_order(10_007, 100, rng), 8)
    second = windows(block_order(10_007, 100, rng), 8)
    for groups in (first, second):
        rows = np.concatenate([np.arange(a, b) for g in groups for a, b in g])
        assert np.array_equal(np.sort(rows), np.arange(10_007))
        assert all(len(g) == 8 for g in groups[:-1])
    assert first != second


def _synthetic(tmp_path: Path, n: int, d: int = 24, seed: int = 0) -> dict[str, str]:
    """A binary task a model learns well, as prepared files."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = ((X @ rng.normal(size=d) + 0.5 * rng.normal(size=n)) > 0).astype(np.int64)
    cut = int(0.8 * n)
    return {name: _save(tmp_path / f"{name}.npy", a)
            for name, a in (("X_train", X[:cut]), ("y_train", y[:cut]), ("X_val", X[cut:]), ("y_val", y[cut:]))}


def test_a_trial_over_its_budget_streams_and_learns_what_it_learns_in_memory(tmp_path):
    files = _synthetic(tmp_path, 40_000)
    held = arrays.data_for(files, "binary", 2)
    assert isinstance(held[0], DeviceData)
    memory.set_budget(4)       # 40,000 rows x 24 features take 3.7 MB: past half of 4 MB
    streamed = arrays.data_for(files, "binary", 2)
    assert isinstance(streamed[0], StreamedData) and len(streamed[0].train) == 32_000
    in_memory = train_and_score(held, MLP, "binary", 2, "roc_auc", seed=0)
    from_disk = train_and_score(streamed, MLP, "binary", 2, "roc_auc", seed=0)
    assert from_disk.state == "COMPLETE" and from_disk.predictions.shape == (8_000, 2)
    assert from_disk.value > 0.95 and abs(from_disk.value - in_memory.value) < 0.01
    y_val = np.load(files["y_val"])
    assert metrics.score("roc_auc", y_val, from_disk.predictions) == pytest.approx(from_disk.value)
    again = train_and_score(streamed, MLP, "binary", 2, "roc_auc", seed=0)
    assert again.value == from_disk.value      # seeded: the same windows, the same batches


@pytest.fixture(scope="module")
def books(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return prepare("book_banning.csv", "removed", tmp_path_factory.mktemp("books"), drop_columns=["rownames"])


def test_streamed_target_encoded_rows_are_the_in_memory_encoding_row_for_row(books):
    files = {k: v for k, v in books["files"].items() if k != "folds"}   # one split, as a large table has
    task, n_classes = books["profile"]["task"], len(books["profile"]["classes"])
    held = arrays.encoded_splits(files, task, n_classes, "target")[0]
    train, val, _ = arrays._sources(files, task, n_classes, None, "target")
    assert train.n_features == held["X_train"].shape[1]
    np.testing.assert_array_equal(np.concatenate(list(train.chunks(97))), held["X_train"])
    np.testing.assert_array_equal(np.concatenate(list(val.chunks(97))), held["X_val"])
    assert arrays.model_bytes(files, task, n_classes, "target") == 4 * train.n_features * (len(train) + len(val))


def test_trees_over_their_budget_train_on_a_sample_that_fits_and_score_every_validation_row(tmp_path):
    files = _synthetic(tmp_path, 40_000)
    splits, sampled = arrays.tree_splits(files, "binary", 2, "onehot", None)
    assert sampled is None and splits[0]["X_train"].shape[0] == 32_000
    memory.set_budget(2)
    splits, sampled = arrays.tree_splits(files, "binary", 2, "onehot", None)
    per_row = arrays.tree_row_bytes(24, 24, 1)
    assert sampled == (1 << 20) // per_row and splits[0]["X_train"].shape == (sampled, 24)
    assert sampled * per_row <= arrays.STREAM_SHARE * (2 << 20)
    assert isinstance(splits[0]["X_val"], RowSource) and len(splits[0]["X_val"]) == 8_000
    res = train_and_score_gbt(splits, GBT, "binary", "roc_auc", seed=0)
    assert res.predictions.shape == (8_000, 2) and res.value > 0.85
    assert metrics.score("roc_auc", np.load(files["y_val"]), res.predictions) == pytest.approx(res.value)


def test_a_streamed_epoch_reads_every_training_row_once(tmp_path):
    from nexus_node.pipeline.train import fit_fixed

    files = _synthetic(tmp_path, 30_000)
    reads: list[tuple[int, int]] = []

    class Counted(RowSource):
        def inputs(self, start: int, stop: int) -> np.ndarray:
            reads.append((start, min(stop, len(self))))
            return super().inputs(start, stop)

    train = Counted(NpyRows(files["X_train"]), np.load(files["y_train"]))
    data = StreamedData.from_sources(train, None, "binary", 2, window_bytes=1 << 20)
    model, why = fit_fixed(data, {**MLP, "epochs": 1}, 1, seed=0)
    assert model is not None and why == ""
    rows = np.concatenate([np.arange(a, b) for a, b in reads])
    assert len(reads) > 8 and np.array_equal(np.sort(rows), np.arange(24_000))


def test_a_class_sample_keeps_every_class_even_a_rare_one():
    labels = np.zeros(48_000, dtype=np.int64)
    labels[::2400] = 2                       # 20 rows of class 2
    labels[1::3] = 1
    rows = sample_rows(48_000, 2_000, labels=labels)
    counts = np.bincount(labels[rows], minlength=3)
    assert counts[2] == 20 and counts[1] > 500 and abs(rows.size - 2_000) <= 40
    assert np.array_equal(rows, sample_rows(48_000, 2_000, labels=labels))


def test_the_first_tree_trial_decides_the_sample_and_too_little_room_fails_with_the_sizes(tmp_path):
    files = _synthetic(tmp_path, 40_000)
    memory.set_budget(2)
    memory.begin_task()
    first, sampled = arrays.tree_splits(files, "binary", 2, "onehot", None)
    held = np.ones(1 << 17)                  # 1 MB more held: a later trial has less room
    memory.begin_task()
    again, sampled_again = arrays.tree_splits(files, "binary", 2, "onehot", None)
    assert sampled is not None and sampled_again == sampled and held.sum() > 0
    np.testing.assert_array_equal(first[0]["X_train"], again[0]["X_train"])
    (tmp_path / "wide").mkdir()
    wide = _synthetic(tmp_path / "wide", 10_000, d=200)   # 3.5 kB a row as trees hold it
    memory.set_budget(1)
    memory.begin_task()
    with pytest.raises(FailedPrecondition, match=r"budget of 1 MB leaves room for \d+ of the 8000 training rows"):
        arrays.tree_splits(wide, "binary", 2, "onehot", None)
