"""The model artifact: one zip holding weights, preprocessing, config and metrics.

Members: ``model.pt`` (``torch.save`` of the state_dict, read back with
``weights_only=True``), ``preprocessing.json``, ``config.json``, ``metrics.json``.
Nothing is pickled: loading an artifact from another node cannot run code.
"""

from __future__ import annotations

import io
import json
import os
import platform
import zipfile
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch

from nexus_node.errors import InvalidInput
from nexus_node.pipeline.prepare import transform
from nexus_node.pipeline.train import model_from_state, pick_device, predict

FORMAT = "nexus-model"
FORMAT_VERSION = 1
MEMBERS = ("model.pt", "preprocessing.json", "config.json", "metrics.json")


def library_versions() -> dict[str, str]:
    """Versions that produced an artifact (for people diagnosing a load failure)."""
    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "pandas": pd.__version__}


def write_artifact(path: str, state_dict: Mapping[str, torch.Tensor], preprocessing: Mapping[str, Any],
                   config: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
    """Write the zip atomically (a reader never sees a half-written file).

    Args:
        path: Destination file.
        state_dict: The network's weights (moved to the CPU before saving).
        preprocessing: Fitted preprocessing dict.
        config: Everything needed to rebuild the network (see :func:`load_artifact`).
        metrics: Test metrics and feature importance.
    """
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, buf)
    tmp = f"{path}.tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.pt", buf.getvalue())
        for name, obj in (("preprocessing.json", preprocessing), ("config.json", config), ("metrics.json", metrics)):
            z.writestr(name, json.dumps(obj, indent=1, sort_keys=True, allow_nan=False))
    os.replace(tmp, path)


def read_artifact(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Read the zip's members: ``(state_dict, preprocessing, config, metrics)``.

    Raises:
        InvalidInput: The file is not a Nexus model artifact.
    """
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            absent = [m for m in MEMBERS if m not in names]
            if absent:
                raise InvalidInput(f"{path} is not a Nexus model: it lacks {absent}")
            state = torch.load(io.BytesIO(z.read("model.pt")), map_location="cpu", weights_only=True)
            prep, config, metrics = (json.loads(z.read(n)) for n in MEMBERS[1:])
    except zipfile.BadZipFile:
        raise InvalidInput(f"{path} is not a Nexus model (not a zip file)") from None
    if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise InvalidInput(f"{path} has model format {config.get('format')!r} "
                           f"v{config.get('format_version')}; this node reads {FORMAT} v{FORMAT_VERSION}")
    return state, prep, config, metrics


class Predictor:
    """A loaded model: encodes text rows and predicts.

    Attributes:
        preprocessing: The fitted preprocessing.
        config: The artifact's config (task, classes, params, input columns).
        metrics: The artifact's test metrics and feature importance.
    """

    def __init__(self, state_dict: Mapping[str, torch.Tensor], preprocessing: dict[str, Any],
                 config: dict[str, Any], metrics: dict[str, Any]) -> None:
        self.preprocessing, self.config, self.metrics = preprocessing, config, metrics
        self.task = config["task"]
        self.classes = list(config.get("classes") or [])
        self._transform = preprocessing["target"].get("transform")
        self._model = model_from_state(state_dict, config["n_in"], config["n_out"], config["params"], pick_device())

    @property
    def input_columns(self) -> list[str]:
        return list(self.preprocessing["input_columns"])

    def predict_encoded(self, X: np.ndarray) -> np.ndarray:
        """Encoded rows to predictions: values in target units, or class probabilities."""
        device = next(self._model.parameters()).device
        return predict(self._model, torch.as_tensor(X, dtype=torch.float32, device=device), self.task, self._transform)

    def predict(self, df: pd.DataFrame) -> dict[str, Any]:
        """Predict every row of ``df`` (text cells as :mod:`.csvio` reads them).

        Columns the model was not trained on are ignored.

        Returns:
            ``{"classes": [...], "predictions": [{"label", "value", "probabilities"}]}``
            in row order; for regression ``classes`` and ``probabilities`` are empty and
            ``value`` is in target units; otherwise ``value`` is the class index.

        Raises:
            InvalidInput: A training column is missing (the message names it).
        """
        out = self.predict_encoded(transform(df, self.preprocessing))
        if self.task == "regression":
            rows = [{"label": str(float(v)), "value": float(v), "probabilities": []} for v in out]
        else:
            idx = out.argmax(axis=1)
            rows = [{"label": self.classes[i], "value": float(i), "probabilities": [float(p) for p in probs]}
                    for i, probs in zip(idx.tolist(), out)]
        return {"classes": list(self.classes), "predictions": rows}


def load_artifact(path: str) -> Predictor:
    """Load an artifact written by :func:`write_artifact`."""
    return Predictor(*read_artifact(path))
