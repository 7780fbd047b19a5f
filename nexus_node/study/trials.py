"""A finished or running trial as the rest of Nexus sees it: plain data, no Optuna type."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrialView:
    number: int
    state: str
    value: float | None
    params: dict[str, Any] = field(default_factory=dict)
    duration_seconds: float = 0.0
    node_id: str = ""
    message: str = ""
    last_step: int = 0
    retry_of: int | None = None   # the trial whose parameters this one runs again
