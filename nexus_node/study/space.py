"""The search space, bounded by :class:`~nexus_node.study.constraints.Constraints`.

Runs in the node process at ``study.ask()`` time: the node samples every parameter of a
trial before handing it to a runner, so the sampler sees every trial in one place and a
runner only trains what it is given. The family is sampled first and each family's
parameters only for its trials (conditional parameters), so TPE models each family's
space on that family's trials alone.
"""

from __future__ import annotations

from typing import Any

import optuna

from nexus_node.study.constraints import Constraints

# Gradient-boosted trees' space. Fixed rather than constrained: unlike the MLP's width and
# batch size, none of these grows a trial's memory past what the data already takes.
GBT_LEARNING_RATE = (0.01, 0.3)
GBT_MAX_ITER = (50, 500)
# From 4 leaves, as LightGBM's searches in FLAML start: on small tables shallow trees often
# win (insurance, 4-fold validation: 4 leaves 0.862, 8 leaves 0.861, 31 leaves 0.854).
GBT_MAX_LEAF_NODES = (4, 128)
GBT_MIN_SAMPLES_LEAF = (5, 100)
GBT_L2 = (1e-6, 10.0)


def suggest_params(trial: optuna.Trial, c: Constraints) -> dict[str, Any]:
    """Sample one configuration; returns the same dict the runner trains."""
    family = _choice(trial, "family", c.families)
    if family == "gbt":
        return {
            "family": "gbt",
            **_target_params(trial, c, "gbt_"),
            "learning_rate": _log_float(trial, "gbt_learning_rate", *GBT_LEARNING_RATE),
            "max_iter": _int(trial, "gbt_max_iter", *GBT_MAX_ITER),
            "max_leaf_nodes": trial.suggest_int("gbt_max_leaf_nodes", *GBT_MAX_LEAF_NODES, log=True),
            "min_samples_leaf": trial.suggest_int("gbt_min_samples_leaf", *GBT_MIN_SAMPLES_LEAF, log=True),
            "l2_regularization": _log_float(trial, "gbt_l2_regularization", *GBT_L2),
        }
    p: dict[str, Any] = {"family": family, **_target_params(trial, c, "")}
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


def _target_params(trial: optuna.Trial, c: Constraints, prefix: str) -> dict[str, Any]:
    """The target's scale, the loss's class weights and the high-cardinality columns'
    encoding (one-hot or the target's), for the choices ``c`` offers (none when it offers
    none: the task or the table has no such choice)."""
    p: dict[str, Any] = {}
    if c.target_transforms:
        p["target_transform"] = _choice(trial, f"{prefix}target_transform", c.target_transforms)
    if c.class_weights:
        p["class_weight"] = _choice(trial, f"{prefix}class_weight", c.class_weights)
    if c.category_encodings:
        p["category_encoding"] = _choice(trial, f"{prefix}category_encoding", c.category_encodings)
    return p


def default_params(c: Constraints) -> dict[str, Any]:
    """A sensible first configuration of the first family inside ``c``: enqueued as
    trial 0 so every search starts from a known-good point instead of a random one."""
    return defaults_for(c.families[0], c)


def default_configs(c: Constraints) -> list[dict[str, Any]]:
    """Known-good starting configurations: one per family in ``c``, in family order, then
    the trees' default again with each other target scale ``c`` offers, so validation
    compares the scales on equal terms within the first trials (trees: the quicker family
    to train), then the trees' portfolio (:data:`GBT_PORTFOLIO`). Class weightings get no start of their own: measured, they barely move
    ROC-AUC (adult +0.002, titanic -0.003 test AUC with the trees' default), so the
    sampler alone tries them rather than every search paying a trial for them."""
    configs = [defaults_for(f, c) for f in c.families]
    if "gbt" in c.families:
        base = defaults_for("gbt", c)
        configs += [{**base, "target_transform": t} for t in c.target_transforms[1:]]
        configs += [{**base, **extra} for extra in GBT_PORTFOLIO]
    return configs


#: Tree configurations that do well across tables, run right after the defaults so that
#: even a short budget ends with more than one good model (the idea of AutoGluon's zero-shot
#: portfolio and FLAML's low-cost starts); ensemble selection gains most from such varied
#: strong members. Small trees learning slowly suit small, noisy tables (insurance, 4-fold:
#: 4 leaves beat 31); larger trees suit large tables with interactions (LightGBM's and
#: AutoGluon's larger-leaf presets).
GBT_PORTFOLIO: tuple[dict[str, Any], ...] = (
    {"learning_rate": 0.05, "max_iter": 500, "max_leaf_nodes": 8, "min_samples_leaf": 10, "l2_regularization": 1.0},
    {"learning_rate": 0.05, "max_iter": 500, "max_leaf_nodes": 63, "min_samples_leaf": 20, "l2_regularization": 0.1},
)


def defaults_for(family: str, c: Constraints) -> dict[str, Any]:
    """The known-good configuration of one family (scikit-learn's own defaults for trees,
    with more iterations since early stopping ends them)."""
    target = {k: v[0] for k, v in (("target_transform", c.target_transforms), ("class_weight", c.class_weights),
                                     ("category_encoding", c.category_encodings)) if v}
    if family == "gbt":
        return {"family": "gbt", **target, "learning_rate": 0.1, "max_iter": 300, "max_leaf_nodes": 31,
                "min_samples_leaf": 20, "l2_regularization": 1e-6}
    mid_width = c.widths[len(c.widths) // 2]
    return {
        "family": family,
        **target,
        "n_layers": min(max(2, c.min_layers), c.max_layers),
        "width": mid_width,
        "activation": "relu" if "relu" in c.activations else c.activations[0],
        "dropout": min(max(0.1, c.dropout[0]), c.dropout[1]),
        "learning_rate": min(max(3e-3, c.learning_rate[0]), c.learning_rate[1]),
        "weight_decay": min(max(1e-5, c.weight_decay[0]), c.weight_decay[1]),
        "batch_size": c.batch_sizes[len(c.batch_sizes) // 2],
        "epochs": c.max_epochs,
    }


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """A configuration as Optuna parameter names, for ``study.enqueue_trial``: tree
    parameters carry a ``gbt_`` prefix in the study so they never share a distribution
    with an MLP parameter of the same name (both families have a learning rate)."""
    if config.get("family") != "gbt":
        return dict(config)
    return {("family" if k == "family" else f"gbt_{k}"): v for k, v in config.items()}


def _choice(trial: optuna.Trial, name: str, choices: tuple[Any, ...]) -> Any:
    return trial.suggest_categorical(name, list(choices)) if len(choices) > 1 else choices[0]


def _int(trial: optuna.Trial, name: str, lo: int, hi: int) -> int:
    return trial.suggest_int(name, lo, hi) if hi > lo else lo


def _log_float(trial: optuna.Trial, name: str, lo: float, hi: float) -> float:
    return trial.suggest_float(name, lo, hi, log=True) if hi > lo else lo
