"""Train the MLP: the search's objective (:func:`train_and_score`) and the final refit
(:func:`fit_fixed`).

numpy + torch only (no pandas), so a trial runner imports little. Data moves to the
device once per dataset (:class:`DeviceData`); an epoch is a shuffled pass of mini-batches
indexed straight from the device tensors, with no DataLoader, because for tables of this
size the loader's per-batch overhead would cost more than the arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from nexus_node.pipeline import metrics
from nexus_node.pipeline import target as target_scale
from nexus_node.pipeline.model import build_mlp, output_width
from nexus_node.pipeline.optim import FusedAdamW
from nexus_node.pipeline.result import TrainResult

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
            X_train=torch.tensor(np.asarray(arrays["X_train"]), dtype=torch.float32, device=device),
            y_train=y_t,
            X_val=torch.tensor(np.asarray(arrays["X_val"]), dtype=torch.float32, device=device) if has_val else None,
            y_val_np=np.asarray(arrays["y_val"]) if has_val else None,
            transform=t,
        )

    @property
    def device(self) -> torch.device:
        return self.X_train.device


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


def _loss_fn(data: DeviceData, params: Mapping[str, Any]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy for classes (weighted per ``params["class_weight"]``, default
    ``"none"``); for regression ``params["loss"]``: ``"huber"`` (default) or ``"mse"``."""
    task = data.task
    if task != "regression":
        w = class_weights(data.y_train.cpu().numpy(), data.n_classes, params.get("class_weight", "none"))
        return nn.CrossEntropyLoss(weight=None if w is None else torch.tensor(
            w, dtype=torch.float32, device=data.device))
    kind = params.get("loss", "huber")
    if kind not in ("huber", "mse"):
        raise ValueError(f"loss {kind!r} is not 'huber' or 'mse'")
    fn = nn.HuberLoss(delta=HUBER_DELTA) if kind == "huber" else nn.MSELoss()
    return lambda out, y: fn(out[:, 0], y)


def _setup(data: DeviceData, params: Mapping[str, Any], seed: int,
           threads: int) -> tuple[nn.Module, FusedAdamW, torch.Generator]:
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = build_mlp(data.X_train.shape[1], output_width(data.task, data.n_classes), params).to(data.device)
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
    for i in range(0, n, batch):
        if stop is not None and stop():
            return None
        idx = perm[i:i + batch]
        # A batch of one row breaks BatchNorm's statistics; with n > 1 one row is noise.
        if idx.numel() < 2 and n > 1:
            continue
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(X[idx]), y[idx])
        loss.backward()
        opt.step()
        total += loss.detach() * idx.numel()
    # One device sync per epoch, not per batch.
    return float(total) / n


@torch.no_grad()
def predict(model: nn.Module, X: torch.Tensor, task: str, transform: Mapping[str, Any] | None) -> np.ndarray:
    """Model outputs as numbers a person reads.

    Returns:
        Regression: predictions in original target units, shape ``(n,)``. Classification:
        class probabilities, shape ``(n, n_classes)``, float64.
    """
    model.eval()
    outs = [model(X[i:i + EVAL_CHUNK]) for i in range(0, X.shape[0], EVAL_CHUNK)]
    out = torch.cat(outs) if outs else torch.zeros((0, 1), device=X.device)
    if task == "regression":
        assert transform is not None, "a regression model predicts through its target transform"
        return target_scale.inverse(out[:, 0].double().cpu().numpy(), transform)
    return torch.softmax(out.double(), dim=1).cpu().numpy()


def train_and_score(
    data: DeviceData | Mapping[str, np.ndarray] | Sequence[DeviceData],
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
            ``DeviceData.from_arrays(..., log=target.log_choice(params))``), a list of them
            (one per fold, fold 0 first), or numpy arrays ``X_train, y_train, X_val, y_val``.
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
    folds = [data] if isinstance(data, DeviceData) else list(data)
    if not folds or any(d.X_val is None for d in folds):
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
            loss = None if stop is not None and stop() else _run_epoch(
                model, opt, loss_fn, d.X_train, d.y_train, int(params["batch_size"]), gen, stop)
            if loss is None:
                why = "stopped: cancelled" if cancelled is not None and cancelled() else f"pruned at epoch {epoch - 1}"
                return TrainResult(best, best_epoch, best_state, "PRUNED", why, epoch, best_preds)
            losses.append(loss)
            assert d.X_val is not None and d.y_val_np is not None   # checked before the loop
            preds.append(predict(model, d.X_val, task_type, d.transform))
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
    data: DeviceData, params: Mapping[str, Any], epochs: int, seed: int, threads: int = 1,
) -> tuple[nn.Module | None, str]:
    """Train for exactly ``epochs`` epochs with no validation (the final refit).

    Returns:
        ``(model, "")``, or ``(None, reason)`` when the loss diverged.
    """
    model, opt, gen = _setup(data, params, seed, threads)
    loss_fn = _loss_fn(data, params)
    for epoch in range(max(1, epochs)):
        loss = _run_epoch(model, opt, loss_fn, data.X_train, data.y_train, int(params["batch_size"]), gen)
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

