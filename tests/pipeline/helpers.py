"""Helpers shared by the pipeline and runner tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nexus_node.runner.context import LocalContext
from nexus_node.runner.tasks import run_task
from nexus_node.study.constraints import heuristic_constraints
from nexus_node.study.space import default_params
from tests.conftest import dataset


def prepare(name: str, target: str, out_dir: Path, **extra: Any) -> dict[str, Any]:
    """Run the prepare task on ``../shared/datasets/NAME`` as the node would."""
    req = {"task": "prepare", "csv_path": str(dataset(name)), "target": target, "seed": 0,
           "drop_columns": [], "out_dir": str(out_dir), **extra}
    return run_task(req, LocalContext())


def default_config(prepared: dict[str, Any]) -> dict[str, Any]:
    """The configuration a search starts from: heuristic constraints, default params."""
    return default_params(heuristic_constraints(prepared["profile"], 8 << 30))


def arrays(prepared: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.load(v, allow_pickle=False) for k, v in prepared["files"].items()}


def write_csv(directory: Path, text: str | bytes, name: str = "data.csv") -> Path:
    path = directory / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path
