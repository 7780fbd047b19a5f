"""Train the MLP: the search's objective (:func:`train_and_score`) and the final refit
(:func:`fit_fixed`).

numpy + torch only (no pandas), so a trial runner imports little. Data moves to the
device once per dataset (:class:`DeviceData`); an epoch is a shuffled pass of mini-batches
indexed straight from the device tensors, with no DataLoader, because for tables of this
size the loader's per-batch overhead would cost more than the arithmetic.

Data larger than a trial's memory streams instead (:class:`StreamedData`): an epoch reads
the training rows a window at a time (blocks drawn in random order, shuffled together), the
next window read on a side thread while the model trains on this one, and validation is
scored a chunk at a time. Only two windows and the model are held, however many rows there
are.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import torch
from torch import nn

from nexus_node.pipeline import metrics
from nexus_node.pipeline import target as target_scale
from nexus_node.pipeline.model import build_mlp, output_width
from nexus_node.pipeline.optim import FusedAdamW
from nexus_node.pipeline.result import TrainResult
from nexus_node.pipeline.row_stream import RowSource, block_order, block_rows, windows

# Epochs without a better validation score before a trial stops early.
PATIENCE = 10
# Huber loss threshold in standardised target units. Tabular targets (costs, prices) carry
# rows no feature explains; squared error chases them, Huber's linear tail does not. On the
# insurance data this lifts held-out R² from about 0.83 to 0.84 and costs nothing elsewhere.
HUBER_DELTA = 0.25
# Rows per forward pass at evaluation time: bounds memory on large validation splits. Each
# layer's output is chunk x width floats and a few are alive at once: 8192 rows of a
# 512-wide network hold about 50 MB (65536 rows made a fertility trial peak 440 MB over
# its data); smaller chunks than this start to cost time on the CPU.
EVAL_CHUNK = 8192
# A streamed epoch holds a window of this many bytes of training inputs (and reads the next
# one meanwhile), made of this many blocks drawn at random from the whole file. Rows are
# shuffled within a window: with 8 blocks from anywhere in the file, a mini-batch mixes
# rows from 8 places, close enough to a full shuffle for SGD on rows in any file order.
STREAM_WINDOW_BYTES = 16 << 20
STREAM_BLOCKS = 8


def pick_device() -> torch.device:
    """CUDA when this process sees a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class DeviceData:
    """Training and validation tensors on one device, with what scoring needs.

    Regression targets are kept in original units (``y_val_np``) for scoring and scaled by
    ``transform`` (fitted on the training targets, as prepare does) for the loss.
    Validation tensors are ``None`` for a final refit on train+val.
    """

    task: str
    n_classes: int
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_val: torch.Tensor | None
    y_val_np: np.ndarray | None
    transform: dict[str, Any] | None

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], task: str, n_classes: int,
        device: torch.device | None = None, transform: Mapping[str, Any] | None = None,
        log: bool | None = None,
    ) -> "DeviceData":
        """Move ``X_train``/``y_train`` (and ``X_val``/``y_val`` when present) to ``device``.

        Args:
            arrays: numpy arrays by name (``X_*`` float32; ``y_*`` float64 values or int64
                class indices).
            task: ``"regression"``, ``"binary"`` or ``"multiclass"``.
            n_classes: Class count (ignored for regression).
            device: Defaults to :func:`pick_device`.
            transform: The regression target scaling; fitted on ``y_train`` when omitted.
            log: When fitting it: a configuration's log choice (:func:`.target.log_choice`).
        """
        device = device or pick_device()
        y_train = np.asarray(arrays["y_train"])
        t = None
        if task == "regression":
            t = dict(transform) if transform is not None else target_scale.fit_target_transform(y_train, log)
            y_t = torch.tensor(target_scale.forward(y_train, t), dtype=torch.float32, device=device)
        else:
            y_t = torch.tensor(y_train, dtype=torch.int64, device=device)
        has_val = "X_val" in arrays and arrays["X_val"] is not None
        return cls(
            task=task, n_classes=n_classes,
            X_train=_tensor(arrays["X_train"], device),
            y_train=y_t,
            X_val=_tensor(arrays["X_val"], device) if has_val else None,
            y_val_np=np.asarray(arrays["y_val"]) if has_val else None,
            transform=t,
        )

    @property
    def device(self) -> torch.device:
        return self.X_train.device

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])

    def train_labels(self) -> np.ndarray:
        return self.y_train.cpu().numpy()


@dataclass
class StreamedData:
    """Training and validation rows read from disk as they are used (see the module's
    docstring), with what scoring needs; the streaming twin of :class:`DeviceData`.

    ``val`` is None for a final refit.
    """

    task: str
    n_classes: int
    train: RowSource
    val: RowSource | None
    y_val_np: np.ndarray | None
    transform: dict[str, Any] | None
    device: torch.device
    window_bytes: int = STREAM_WINDOW_BYTES

    @classmethod
    def from_sources(cls, train: RowSource, val: RowSource | None, task: str, n_classes: int,
                     device: torch.device | None = None, transform: Mapping[str, Any] | None = None,
                     log: bool | None = None, window_bytes: int = STREAM_WINDOW_BYTES) -> "StreamedData":
        """As :meth:`DeviceData.from_arrays`, with the rows left where they are; an epoch
        holds two windows of ``window_bytes`` (the one it trains on, the one it reads)."""
        t = None
        if task == "regression":
            t = dict(transform) if transform is not None else target_scale.fit_target_transform(
                np.asarray(train.y), log)
        return cls(task, n_classes, train, val, None if val is None else np.asarray(val.y), t,
                   device or pick_device(), window_bytes)

    @property
    def n_features(self) -> int:
        return self.train.n_features

    def train_labels(self) -> np.ndarray:
        return np.asarray(self.train.y)

    def window(self, blocks: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The training rows of ``blocks`` as tensors on the device (read a block at a
        time into the window: one block more is held while it fills)."""
        X = np.empty((sum(b - a for a, b in blocks), self.n_features), dtype=np.float32)
        at = 0
        for a, b in blocks:
            X[at:at + b - a] = self.train.inputs(a, b)
            at += b - a
        y = np.concatenate([np.asarray(self.train.y[a:b]) for a, b in blocks])
        if self.task == "regression":
            assert self.transform is not None
            y_t = torch.from_numpy(target_scale.forward(y, self.transform).astype(np.float32))
        else:
            y_t = torch.from_numpy(y.astype(np.int64, copy=False))
        return torch.from_numpy(X).to(self.device), y_t.to(self.device)


def _tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """``a`` as a float32 tensor on ``device``: on the CPU, an array the process already holds
    (float32, writable: rows joined from shards, an encoded copy) is shared, not copied; a
    memory-mapped one is copied."""
    if (device.type == "cpu" and isinstance(a, np.ndarray) and not isinstance(a, np.memmap)
            and a.dtype == np.float32 and a.flags.writeable and a.flags.c_contiguous):
        return torch.from_numpy(a)
    return torch.tensor(np.asarray(a), dtype=torch.float32, device=device)


#: What the training functions take: rows on the device, or rows streamed from disk.
Data = Union[DeviceData, StreamedData]


def _has_val(d: Data) -> bool:
    return (d.X_val if isinstance(d, DeviceData) else d.val) is not None


def class_weights(y: np.ndarray, n_classes: int, choice: str) -> np.ndarray | None:
    """Per-class loss weights for ``params["class_weight"]``: None for ``"none"``; for
    ``"balanced"`` ``n / (n_classes * count)`` (scikit-learn's rule; a class absent from
    ``y`` gets 1), so every class carries the same total weight."""
    if choice == "none":
        return None
    if choice != "balanced":
        raise ValueError(f"class_weight {choice!r} is not 'none' or 'balanced'")
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes).astype(np.float64)
    return np.where(counts > 0, counts.sum() / (n_classes * np.maximum(counts, 1.0)), 1.0)


def _loss_fn(data: Data, params: Mapping[str, Any]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy for classes (weighted per ``params["class_weight"]``, default
    ``"none"``); for regression ``params["loss"]``: ``"huber"`` (default) or ``"mse"``."""
    task = data.task
    if task != "regression":
        w = class_weights(data.train_labels(), data.n_classes, params.get("class_weight", "none"))
        return nn.CrossEntropyLoss(weight=None if w is None else torch.tensor(
            w, dtype=torch.float32, device=data.device))
    kind = params.get("loss", "huber")
    if kind not in ("huber", "mse"):
        raise ValueError(f"loss {kind!r} is not 'huber' or 'mse'")
    fn = nn.HuberLoss(delta=HUBER_DELTA) if kind == "huber" else nn.MSELoss()
    return lambda out, y: fn(out[:, 0], y)


def _setup(data: Data, params: Mapping[str, Any], seed: int,
           threads: int) -> tuple[nn.Module, FusedAdamW, torch.Generator]:
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = build_mlp(data.n_features, output_width(data.task, data.n_classes), params).to(data.device)
    # The fused kernel updates all parameters in one call: about a quarter off a small
    # model's epoch on the CPU, where the per-tensor loop is mostly Python overhead. Called
    # through FusedAdamW, not torch.optim, which loads torch's compiler (pipeline/optim.py).
    opt = FusedAdamW(model.parameters(), lr=float(params["learning_rate"]),
                     weight_decay=float(params["weight_decay"]))
    gen = torch.Generator().manual_seed(seed)
    return model, opt, gen


def _run_epoch(model: nn.Module, opt: FusedAdamW, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               X: torch.Tensor, y: torch.Tensor,
               batch: int, gen: torch.Generator, stop: Callable[[], bool] | None = None) -> float | None:
    """One shuffled pass; returns the mean training loss (NaN/inf if it diverged), or None
    when ``stop()`` turned true between two batches and the epoch was abandoned."""
    model.train()
    n = X.shape[0]
    perm = torch.randperm(n, generator=gen).to(X.device)
    total = torch.zeros((), device=X.device)
    if not _steps(model, opt, loss_fn, X, y, perm, batch, n, total, stop):
        return None
    # One device sync per epoch, not per batch.
    return float(total) / n


def _steps(model: nn.Module, opt: FusedAdamW, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
           X: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, batch: int, n: int, total: torch.Tensor,
           stop: Callable[[], bool] | None) -> bool:
    """One optimizer step per mini-batch of ``X, y`` in the order ``perm``, each batch's
    loss times its rows added to ``total``; False when ``stop()`` turned true between two.
    ``n``: the epoch's row count."""
    for i in range(0, perm.numel(), batch):
        if stop is not None and stop():
            return False
        idx = perm[i:i + batch]
        # A batch of one row breaks BatchNorm's statistics; with n > 1 one row is noise.
        if idx.numel() < 2 and n > 1:
            continue
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(X[idx]), y[idx])
        loss.backward()
        opt.step()
        total += loss.detach() * idx.numel()
    return True


def _run_streamed_epoch(model: nn.Module, opt: FusedAdamW,
                        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], data: StreamedData,
                        batch: int, gen: torch.Generator, stop: Callable[[], bool] | None = None) -> float | None:
    """:func:`_run_epoch` over rows read a window at a time (see the module's docstring)."""
    model.train()
    n = len(data.train)
    per_block = max(batch, block_rows(data.train.row_bytes, data.window_bytes // STREAM_BLOCKS))
    order = np.random.default_rng(int(torch.randint(1 << 62, (1,), generator=gen)))
    groups = windows(block_order(n, per_block, order), STREAM_BLOCKS)
    total = torch.zeros((), device=data.device)
    with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as reader:
        pending = reader.submit(data.window, groups[0])
        for g in range(len(groups)):
            X, y = pending.result()
            if g + 1 < len(groups):
                pending = reader.submit(data.window, groups[g + 1])
            perm = torch.randperm(X.shape[0], generator=gen).to(data.device)
            if not _steps(model, opt, loss_fn, X, y, perm, batch, n, total, stop):
                return None
            del X, y
    return float(total) / n


def _epoch(model: nn.Module, opt: FusedAdamW, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
           data: Data, batch: int, gen: torch.Generator, stop: Callable[[], bool] | None = None) -> float | None:
    if isinstance(data, StreamedData):
        return _run_streamed_epoch(model, opt, loss_fn, data, batch, gen, stop)
    return _run_epoch(model, opt, loss_fn, data.X_train, data.y_train, batch, gen, stop)


@torch.no_grad()
def predict(model: nn.Module, X: torch.Tensor, task: str, transform: Mapping[str, Any] | None) -> np.ndarray:
    """Model outputs as numbers a person reads.

    Returns:
        Regression: predictions in original target units, shape ``(n,)``. Classification:
        class probabilities, shape ``(n, n_classes)``, float64.
    """
    model.eval()
    outs = [model(X[i:i + EVAL_CHUNK]) for i in range(0, X.shape[0], EVAL_CHUNK)]
    return _readable(torch.cat(outs) if outs else torch.zeros((0, 1), device=X.device), task, transform)


@torch.no_grad()
def predict_rows(model: nn.Module, rows: RowSource, task: str, transform: Mapping[str, Any] | None,
                 device: torch.device) -> np.ndarray:
    """:func:`predict` of rows read a chunk at a time."""
    model.eval()
    outs = [model(torch.from_numpy(chunk).to(device)) for chunk in rows.chunks(EVAL_CHUNK)]
    return _readable(torch.cat(outs) if outs else torch.zeros((0, 1), device=device), task, transform)


def _predict_val(model: nn.Module, d: Data, task: str) -> np.ndarray:
    if isinstance(d, StreamedData):
        assert d.val is not None
        return predict_rows(model, d.val, task, d.transform, d.device)
    assert d.X_val is not None
    return predict(model, d.X_val, task, d.transform)


def _readable(out: torch.Tensor, task: str, transform: Mapping[str, Any] | None) -> np.ndarray:
    if task == "regression":
        assert transform is not None, "a regression model predicts through its target transform"
        return target_scale.inverse(out[:, 0].double().cpu().numpy(), transform)
    return torch.softmax(out.double(), dim=1).cpu().numpy()


def train_and_score(
    data: Data | Mapping[str, np.ndarray] | Sequence[Data],
    params: Mapping[str, Any],
    task_type: str,
    n_classes: int,
    metric: str,
    seed: int,
    threads: int = 1,
    report: Callable[[float, int], bool] | None = None,
    cancelled: Callable[[], bool] | None = None,
    pruned: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train one configuration with early stopping on the validation split.

    The objective of the search, usable without Nexus (a benchmark runs it inside plain
    Optuna). Each epoch scores the validation split with ``metric`` and calls
    ``report(value, epoch)`` (0-based epoch, as Optuna's pruners expect); a true answer
    prunes. Training stops after :data:`PATIENCE` epochs without improvement or at
    ``params["epochs"]``. Given several folds (:func:`.folds.fold_splits`), one network per
    fold trains in step with the others and an epoch's value is the mean of the folds'
    validation scores.

    Args:
        data: Device tensors (for regression scaled as the configuration says:
            ``DeviceData.from_arrays(..., log=target.log_choice(params))``) or streamed rows
            (:class:`StreamedData`), a list of them (one per fold, fold 0 first), or numpy
            arrays ``X_train, y_train, X_val, y_val``.
        params: The configuration (see :func:`nexus_node.study.space.suggest_params`).
        task_type: ``"regression"``, ``"binary"`` or ``"multiclass"``.
        n_classes: Class count (ignored for regression).
        metric: Validation metric name (see :mod:`.metrics`); its own direction decides
            what "better" means.
        seed: Seeds weight init, dropout and batch order.
        threads: torch intra-op threads (0 leaves torch's setting alone).
        report: Called after every epoch; returns True to prune.
        cancelled: Polled between batches; True stops the run as pruned.
        pruned: Polled between batches: a pruning answer that arrives after ``report``
            returned (the runner asks the study off the training thread). True abandons
            the current epoch and ends the run as pruned at the last reported epoch, so
            it trains the same epochs as an in-process ``report`` answering True.

    Returns:
        A :class:`TrainResult`; with folds its weights are fold 0's (the network trained on
        the train split), the model a single-split trial would keep.
    """
    metrics.check_metric(metric, task_type)
    if isinstance(data, Mapping):
        data = DeviceData.from_arrays(data, task_type, n_classes, log=target_scale.log_choice(params))
    folds = [data] if isinstance(data, (DeviceData, StreamedData)) else list(data)
    if not folds or not all(_has_val(d) for d in folds):
        raise ValueError("train_and_score needs a validation split")
    runs = [(*_setup(d, params, seed, threads), _loss_fn(d, params)) for d in folds]
    maximize = metrics.MAXIMIZE[metric]
    best: float | None = None
    best_epoch, best_state, best_preds, since_best = 0, None, None, 0
    max_epochs = max(1, int(params["epochs"]))
    polls = [f for f in (cancelled, pruned) if f is not None]
    stop = (lambda: any(f() for f in polls)) if polls else None
    for epoch in range(max_epochs):
        losses, scores, preds = [], [], []
        for d, (model, opt, gen, loss_fn) in zip(folds, runs):
            loss = None if stop is not None and stop() else _epoch(
                model, opt, loss_fn, d, int(params["batch_size"]), gen, stop)
            if loss is None:
                why = "stopped: cancelled" if cancelled is not None and cancelled() else f"pruned at epoch {epoch - 1}"
                return TrainResult(best, best_epoch, best_state, "PRUNED", why, epoch, best_preds)
            losses.append(loss)
            assert d.y_val_np is not None   # checked before the loop
            preds.append(_predict_val(model, d, task_type))
            scores.append(metrics.score(metric, d.y_val_np, preds[-1]))
        loss = next((x for x in losses if not math.isfinite(x)), losses[0])
        value = float(np.mean(scores))
        if not (math.isfinite(loss) and math.isfinite(value)):
            return TrainResult(None, epoch + 1, None, "FAIL",
                               f"training diverged at epoch {epoch}: loss {loss}, {metric} {value}; "
                               "a lower learning rate may help", epoch + 1)
        if best is None or (value > best if maximize else value < best):
            best, best_epoch, since_best = value, epoch + 1, 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in runs[0][0].state_dict().items()}
            best_preds = np.concatenate(preds)
        else:
            since_best += 1
        if report is not None and report(value, epoch):
            return TrainResult(best, best_epoch, best_state, "PRUNED", f"pruned at epoch {epoch}", epoch + 1, best_preds)
        if since_best >= PATIENCE:
            return TrainResult(best, best_epoch, best_state, "COMPLETE",
                               f"early stop: no better {metric} for {PATIENCE} epochs", epoch + 1, best_preds)
    return TrainResult(best, best_epoch, best_state, "COMPLETE", f"ran all {max_epochs} epochs", max_epochs,
                       best_preds)


def fit_fixed(
    data: Data, params: Mapping[str, Any], epochs: int, seed: int, threads: int = 1,
) -> tuple[nn.Module | None, str]:
    """Train for exactly ``epochs`` epochs with no validation (the final refit).

    Returns:
        ``(model, "")``, or ``(None, reason)`` when the loss diverged.
    """
    model, opt, gen = _setup(data, params, seed, threads)
    loss_fn = _loss_fn(data, params)
    for epoch in range(max(1, epochs)):
        loss = _epoch(model, opt, loss_fn, data, int(params["batch_size"]), gen)
        assert loss is not None   # no stop callback: every epoch runs to its end
        if not math.isfinite(loss):
            return None, f"refit diverged at epoch {epoch} (loss {loss})"
    return model, ""


def model_from_state(state_dict: Mapping[str, torch.Tensor], n_in: int, n_out: int,
                     params: Mapping[str, Any], device: torch.device | None = None) -> nn.Module:
    """Rebuild a network from saved weights, in evaluation mode."""
    model = build_mlp(n_in, n_out, params)
    model.load_state_dict(state_dict)
    return model.to(device or pick_device()).eval()


def warm_up() -> None:
    """Train a tiny network for two epochs on random data, on the device trials use.

    The first forward, backward and optimizer step in a process set up kernels and thread
    pools; doing it here keeps that out of a trial's clock (about 10 ms on a CPU since the
    optimizer no longer loads torch's compiler, see :mod:`.optim`; more on a GPU).
    """
    rng = np.random.default_rng(0)
    tiny: dict[str, np.ndarray] = {
        "X_train": rng.normal(size=(64, 4)).astype(np.float32), "y_train": rng.normal(size=64),
        "X_val": rng.normal(size=(16, 4)).astype(np.float32), "y_val": rng.normal(size=16)}
    params = {"n_layers": 1, "width": 8, "activation": "relu", "dropout": 0.1,
              "learning_rate": 1e-3, "weight_decay": 0.0, "batch_size": 32, "epochs": 2}
    train_and_score(tiny, params, "regression", 0, "r2", seed=0, threads=0)

