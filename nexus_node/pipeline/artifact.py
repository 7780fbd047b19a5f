"""The model artifact: one zip holding weights, preprocessing, config and metrics.

Members: ``preprocessing.json``, ``config.json``, ``metrics.json`` and the weights of the
model's family (``config["family"]``): for ``mlp``, ``model.pt`` (``torch.save`` of the
state_dict, read back with ``weights_only=True``); for ``gbt``, ``nodes.npy`` and
``roots.npy`` (the exported trees, read back with ``allow_pickle=False``). Nothing is
pickled: loading an artifact from another node cannot run code.

An ensemble (format version 2, family ``ensemble``) holds several models in one zip: the
weights of member ``i`` under ``members/i/``, and ``config["members"]`` lists each member's
weight, family, configuration, target transform and network shape or tree metadata. It
serves the weighted average of its members' predictions. A single model is still written
as version 1, so older nodes read it.

A fitted ensemble member (:func:`write_member`) travels from the node that refitted it to
the one that assembles the ensemble in a zip of the same kind: ``member.json``, its final
fit's weights under ``final/``, and ``evaluated_predictions.npy``, its evaluated fit's
predictions on the inputs permutation importance shuffles (the test split first).

torch is imported only for ``mlp`` artifacts: writing or serving trees never loads it (a
runner that only ran trees stays small).
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import platform
import zipfile
from typing import Any, Mapping

import numpy as np
import pandas as pd

from nexus_node.errors import InvalidInput
from nexus_node.pipeline import target_encoding
from nexus_node.pipeline.ensemble import blend
from nexus_node.pipeline.input_checks import check_numbers, empty_rows, outside_range, unseen_categories, warning_counts
from nexus_node.pipeline.prepare import category_codes, check_columns, transform
from nexus_node.pipeline.trees import predict_trees

FORMAT = "nexus-model"
FORMAT_VERSION = 1
ENSEMBLE_VERSION = 2
MEMBER_FORMAT, MEMBER_VERSION = "nexus-member", 1
MEMBERS = ("preprocessing.json", "config.json", "metrics.json")
WEIGHTS = {"mlp": ("model.pt",), "gbt": ("nodes.npy", "roots.npy")}


def library_versions() -> dict[str, str]:
    """Versions that produced an artifact (for people diagnosing a load failure)."""
    return {"python": platform.python_version(), "torch": importlib.metadata.version("torch"),
            "numpy": np.__version__, "pandas": pd.__version__}


def write_artifact(path: str, weights: Mapping[str, Any], preprocessing: Mapping[str, Any],
                   config: Mapping[str, Any], metrics: Mapping[str, Any]) -> None:
    """Write the zip atomically (a reader never sees a half-written file).

    Args:
        path: Destination file.
        weights: For the ``mlp`` family the network's state_dict (moved to the CPU before
            saving); for ``gbt`` the arrays ``{"nodes", "roots"}``.
        preprocessing: Fitted preprocessing dict.
        config: Everything needed to rebuild the network (see :func:`load_artifact`).
        metrics: Test metrics and feature importance.
    """
    _write_zip(path, _weight_files(config.get("family", "mlp"), weights),
               _documents(preprocessing, config, metrics))


def _documents(preprocessing: Mapping[str, Any], config: Mapping[str, Any],
               metrics: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return dict(zip(MEMBERS, (preprocessing, config, metrics)))


def write_ensemble_artifact(path: str, members: list[tuple[Mapping[str, Any], Mapping[str, Any]]],
                            preprocessing: Mapping[str, Any], config: Mapping[str, Any],
                            metrics: Mapping[str, Any]) -> None:
    """Write an ensemble's zip atomically: ``members`` are ``(weights, member_config)``
    pairs (``member_config`` with ``weight``, ``family`` and what :class:`Predictor` needs
    to rebuild that member); ``config`` is the artifact's, without ``members``."""
    blobs: dict[str, bytes] = {}
    for i, (weights, member) in enumerate(members):
        for name, data in _weight_files(member["family"], weights).items():
            blobs[f"members/{i}/{name}"] = data
    config = {**config, "family": "ensemble", "format_version": ENSEMBLE_VERSION,
              "members": [dict(m) for _, m in members]}
    _write_zip(path, blobs, _documents(preprocessing, config, metrics))


def write_member(path: str, weights: Mapping[str, Any], member: Mapping[str, Any],
                 evaluated_predictions: np.ndarray, test_predictions: np.ndarray | None = None) -> None:
    """Write a fitted ensemble member atomically: ``weights`` of its final fit (its
    ``member["family"]``), ``member`` (JSON: what the ensemble's config records of it),
    its evaluated fit's ``evaluated_predictions`` and, when those are of a sample of the
    test rows, its ``test_predictions`` on all of them."""
    blobs = {f"final/{name}": data for name, data in _weight_files(member["family"], weights).items()}
    for name, array in (("evaluated_predictions.npy", evaluated_predictions), ("test_predictions.npy", test_predictions)):
        if array is not None:
            buf = io.BytesIO()
            np.save(buf, np.asarray(array), allow_pickle=False)
            blobs[name] = buf.getvalue()
    _write_zip(path, blobs, {"member.json": {"format": MEMBER_FORMAT, "format_version": MEMBER_VERSION, **member}})


def read_member(path: str) -> tuple[dict[str, Any], dict[str, Any], np.ndarray, np.ndarray | None]:
    """``(weights, member, evaluated_predictions, test_predictions)`` as :func:`write_member`
    took them.

    Raises:
        InvalidInput: The file is not a fitted member.
    """
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if not {"member.json", "evaluated_predictions.npy"} <= names:
                raise InvalidInput(f"{path} is not a fitted ensemble member")
            member = json.loads(z.read("member.json"))
            if member.get("format") != MEMBER_FORMAT or member.get("format_version") != MEMBER_VERSION:
                raise InvalidInput(f"{path} has member format {member.get('format')!r} "
                                   f"v{member.get('format_version')}; this node reads {MEMBER_FORMAT} v{MEMBER_VERSION}")
            weights = _read_weights(path, z, names, member.get("family", "mlp"), "final/")
            predictions = np.load(io.BytesIO(z.read("evaluated_predictions.npy")), allow_pickle=False)
            test = (np.load(io.BytesIO(z.read("test_predictions.npy")), allow_pickle=False)
                    if "test_predictions.npy" in names else None)
    except zipfile.BadZipFile:
        raise InvalidInput(f"{path} is not a fitted ensemble member (not a zip file)") from None
    return weights, member, predictions, test


def _weight_files(family: str, weights: Mapping[str, Any]) -> dict[str, bytes]:
    blobs: dict[str, bytes] = {}
    if family == "gbt":
        for name in WEIGHTS["gbt"]:
            buf = io.BytesIO()
            np.save(buf, np.asarray(weights[name.removesuffix(".npy")]), allow_pickle=False)
            blobs[name] = buf.getvalue()
    else:
        import torch

        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in weights.items()}, buf)
        blobs["model.pt"] = buf.getvalue()
    return blobs


def _write_zip(path: str, blobs: Mapping[str, bytes], documents: Mapping[str, Mapping[str, Any]]) -> None:
    tmp = f"{path}.tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in blobs.items():
            z.writestr(name, data)
        for name, obj in documents.items():
            z.writestr(name, json.dumps(obj, indent=1, sort_keys=True, allow_nan=False))
    os.replace(tmp, path)


def read_artifact(path: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Read the zip's members: ``(weights, preprocessing, config, metrics)``; ``weights``
    as :func:`write_artifact` takes them for the artifact's family.

    Raises:
        InvalidInput: The file is not a Nexus model artifact.
    """
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            absent = [m for m in MEMBERS if m not in names]
            if absent:
                raise InvalidInput(f"{path} is not a Nexus model: it lacks {absent}")
            prep, config, metrics = (json.loads(z.read(n)) for n in MEMBERS)
            if config.get("format") != FORMAT or config.get("format_version") not in (FORMAT_VERSION, ENSEMBLE_VERSION):
                raise InvalidInput(f"{path} has model format {config.get('format')!r} v{config.get('format_version')}; "
                                   f"this node reads {FORMAT} v{FORMAT_VERSION} and v{ENSEMBLE_VERSION}")
            if config.get("family") == "ensemble":
                weights: dict[str, Any] = {"members": [
                    _read_weights(path, z, names, m.get("family", "mlp"), f"members/{i}/")
                    for i, m in enumerate(config.get("members") or [])]}
                if not weights["members"]:
                    raise InvalidInput(f"{path} is an ensemble with no members")
            else:
                weights = _read_weights(path, z, names, config.get("family", "mlp"), "")
    except zipfile.BadZipFile:
        raise InvalidInput(f"{path} is not a Nexus model (not a zip file)") from None
    return weights, prep, config, metrics


def _read_weights(path: str, z: zipfile.ZipFile, names: set[str], family: str, prefix: str) -> dict[str, Any]:
    if family not in WEIGHTS:
        raise InvalidInput(f"{path} holds a {family!r} model; this node reads {sorted(WEIGHTS)}")
    absent = [prefix + m for m in WEIGHTS[family] if prefix + m not in names]
    if absent:
        raise InvalidInput(f"{path} is not a Nexus model: it lacks {absent}")
    if family == "gbt":
        return {m.removesuffix(".npy"): np.load(io.BytesIO(z.read(prefix + m)), allow_pickle=False)
                for m in WEIGHTS["gbt"]}
    import torch

    state: dict[str, Any] = torch.load(io.BytesIO(z.read(prefix + "model.pt")), map_location="cpu", weights_only=True)
    return state


class Predictor:
    """A loaded model: encodes text rows and predicts.

    Attributes:
        preprocessing: The fitted preprocessing.
        config: The artifact's config (task, classes, params, input columns).
        metrics: The artifact's test metrics and feature importance.
    """

    def __init__(self, weights: Mapping[str, Any], preprocessing: dict[str, Any],
                 config: dict[str, Any], metrics: dict[str, Any]) -> None:
        self.preprocessing, self.config, self.metrics = preprocessing, config, metrics
        self.task = config["task"]
        self.classes = list(config.get("classes") or [])
        self._transform = preprocessing["target"].get("transform")
        self._trees = dict(weights) if config.get("family") == "gbt" else None
        self._model = None
        # A target-encoded model: layout and the mappings it was trained with (None: one-hot).
        self._encoding: tuple[np.ndarray, list[target_encoding.Table]] | None = None
        # An ensemble: one Predictor per member, each with its own configuration, target
        # transform and category encoding (searched choices), over the same feature
        # preprocessing.
        self.members: list[tuple[float, Predictor]] = []
        if config.get("family") == "ensemble":
            for w, m in zip(weights["members"], config["members"]):
                member_prep = {**preprocessing, "target": {**preprocessing["target"], "transform": m.get("transform")}}
                member = {**config, **m, target_encoding.CONFIG_KEY: m.get(target_encoding.CONFIG_KEY)}
                self.members.append((float(m["weight"]), Predictor(w, member_prep, member, metrics)))
            return
        if config.get(target_encoding.CONFIG_KEY):
            try:
                tables = target_encoding.from_json(config[target_encoding.CONFIG_KEY], preprocessing)
            except (ValueError, KeyError, TypeError) as e:
                raise InvalidInput(f"the model's target encodings are unreadable: {e}") from None
            self._encoding = (target_encoding.layout_of(preprocessing), tables)
        if self._trees is None:
            from nexus_node.pipeline.train import model_from_state, pick_device

            self._model = model_from_state(weights, config["n_in"], config["n_out"], config["params"], pick_device())

    @property
    def input_columns(self) -> list[str]:
        return list(self.preprocessing["input_columns"])

    @property
    def reads_codes(self) -> bool:
        """Whether the model (a member) reads category codes: it is target-encoded."""
        return any(m.reads_codes for _, m in self.members) or self._encoding is not None

    def predict_encoded(self, X: np.ndarray, codes: np.ndarray | None = None) -> np.ndarray:
        """Encoded rows to predictions: values in target units, or class probabilities.
        ``codes`` (:func:`~.prepare.category_codes` of the rows) is needed when
        :attr:`reads_codes`."""
        if self.members:
            return blend([m.predict_encoded(X, codes) for _, m in self.members], [w for w, _ in self.members])
        if self._encoding is not None:
            if codes is None:
                raise ValueError("a target-encoded model needs the rows' category codes")
            layout, tables = self._encoding
            X = target_encoding.apply(X, codes, tables, layout)
        if self._trees is not None:
            return predict_trees(self._trees, self.config, X, self.task, self._transform)
        import torch

        from nexus_node.pipeline.train import predict

        assert self._model is not None   # an MLP artifact: built in __init__
        device = next(self._model.parameters()).device
        return predict(self._model, torch.as_tensor(X, dtype=torch.float32, device=device), self.task, self._transform)

    def predict(self, df: pd.DataFrame) -> dict[str, Any]:
        """Predict every row of ``df`` (text cells as :mod:`.csvio` reads them).

        Columns the model was not trained on are ignored.

        Returns:
            ``{"classes": [...], "predictions": [{"label", "value", "probabilities",
            "outside_range", "unseen_categories", "empty"}], "warnings": {...}}`` with the
            predictions in row order; for regression ``classes`` and ``probabilities``
            are empty and ``value`` is in target units (within the band the artifact's
            target transform records); otherwise ``value`` is the class index.
            ``outside_range`` names the row's numeric columns whose value lies outside
            what training saw, ``unseen_categories`` its categorical columns whose value
            the model has no encoding of its own for, ``empty`` whether every input cell
            is empty; ``warnings`` counts the last two over the input
            (:func:`~.input_checks.warning_counts`).

        Raises:
            InvalidInput: A training column is missing, or a numeric one holds text (the
                message names the column).
        """
        check_columns(df, self.preprocessing)
        check_numbers(df, self.preprocessing)
        codes = category_codes(df, self.preprocessing) if self.reads_codes else None
        out = self.predict_encoded(transform(df, self.preprocessing), codes)
        outside = outside_range(df, self.preprocessing)
        unseen = unseen_categories(df, self.preprocessing)
        empty = empty_rows(df, self.preprocessing)
        if self.task == "regression":
            rows = [{"label": str(float(v)), "value": float(v), "probabilities": []} for v in out]
        else:
            idx = out.argmax(axis=1)
            rows = [{"label": self.classes[i], "value": float(i), "probabilities": [float(p) for p in probs]}
                    for i, probs in zip(idx.tolist(), out)]
        for row, names, new, blank in zip(rows, outside, unseen, empty.tolist()):
            row.update(outside_range=list(names), unseen_categories=list(new), empty=blank)
        return {"classes": list(self.classes), "predictions": rows, "warnings": warning_counts(unseen, empty)}


def load_artifact(path: str) -> Predictor:
    """Load an artifact written by :func:`write_artifact`."""
    return Predictor(*read_artifact(path))
