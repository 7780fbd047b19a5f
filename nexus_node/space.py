"""The MLP search space, bounded by :class:`~nexus_node.constraints.Constraints`.

Runs in the node process at ``study.ask()`` time: the node samples every parameter of a
trial before handing it to a runner, so the sampler sees every trial in one place and a
runner only trains what it is given.
"""

from __future__ import annotations

from typing import Any

import optuna

from nexus_node.constraints import Constraints


def suggest_params(trial: optuna.Trial, c: Constraints) -> dict[str, Any]:
    """Sample one configuration; returns the same dict the runner trains."""
    p: dict[str, Any] = {"family": _choice(trial, "family", c.families)}
    p["n_layers"] = _int(trial, "n_layers", c.min_layers, c.max_layers)
    p["width"] = _choice(trial, "width", c.widths)
    p["activation"] = _choice(trial, "activation", c.activations)
    lo, hi = c.dropout
    p["dropout"] = trial.suggest_float("dropout", lo, hi) if hi > lo else lo
    p["learning_rate"] = _log_float(trial, "learning_rate", *c.learning_rate)
    p["weight_decay"] = _log_float(trial, "weight_decay", *c.weight_decay)
    p["batch_size"] = _choice(trial, "batch_size", c.batch_sizes)
    p["epochs"] = _int(trial, "epochs", c.min_epochs, c.max_epochs)
    return p


def default_params(c: Constraints) -> dict[str, Any]:
    """A sensible first configuration inside ``c``: enqueued as trial 0 so every search
    starts from a known-good point instead of a random one."""
    mid_width = c.widths[len(c.widths) // 2]
    return {
        "family": c.families[0],
        "n_layers": min(max(2, c.min_layers), c.max_layers),
        "width": mid_width,
        "activation": "relu" if "relu" in c.activations else c.activations[0],
        "dropout": min(max(0.1, c.dropout[0]), c.dropout[1]),
        "learning_rate": min(max(3e-3, c.learning_rate[0]), c.learning_rate[1]),
        "weight_decay": min(max(1e-5, c.weight_decay[0]), c.weight_decay[1]),
        "batch_size": c.batch_sizes[len(c.batch_sizes) // 2],
        "epochs": c.max_epochs,
    }


def _choice(trial: optuna.Trial, name: str, choices: tuple) -> Any:
    return trial.suggest_categorical(name, list(choices)) if len(choices) > 1 else choices[0]


def _int(trial: optuna.Trial, name: str, lo: int, hi: int) -> int:
    return trial.suggest_int(name, lo, hi) if hi > lo else lo


def _log_float(trial: optuna.Trial, name: str, lo: float, hi: float) -> float:
    return trial.suggest_float(name, lo, hi, log=True) if hi > lo else lo
