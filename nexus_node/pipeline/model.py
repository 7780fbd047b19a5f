"""The MLP family: the network a configuration describes."""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

_ACTIVATIONS = {
    "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU,
}
NORMS = ("none", "batch", "layer")


def output_width(task: str, n_classes: int) -> int:
    """One output for regression, one logit per class otherwise (binary included, so one
    cross-entropy path serves every classification task)."""
    return 1 if task == "regression" else n_classes


def build_mlp(n_in: int, n_out: int, params: Mapping[str, Any]) -> nn.Sequential:
    """``(Linear -> norm -> activation -> dropout) x n_layers -> Linear``.

    Args:
        n_in: Encoded feature count.
        n_out: Output width (see :func:`output_width`).
        params: A configuration from :func:`nexus_node.study.space.suggest_params`; ``norm``
            (``"none"``, ``"batch"``, ``"layer"``) is optional and defaults to none.

    Returns:
        The network, in training mode, on the CPU.
    """
    width = int(params["width"])
    norm = params.get("norm", "none")
    if norm not in NORMS:
        raise ValueError(f"norm {norm!r} is not one of {NORMS}")
    act = _ACTIVATIONS[params["activation"]]
    layers: list[nn.Module] = []
    d = n_in
    for _ in range(int(params["n_layers"])):
        layers.append(nn.Linear(d, width))
        if norm == "batch":
            layers.append(nn.BatchNorm1d(width))
        elif norm == "layer":
            layers.append(nn.LayerNorm(width))
        layers.append(act())
        if float(params.get("dropout", 0.0)) > 0:
            layers.append(nn.Dropout(float(params["dropout"])))
        d = width
    layers.append(nn.Linear(d, n_out))
    return nn.Sequential(*layers)
