"""Domain records for jobs and models. Protobuf stops at the servicer; these are what the
store persists and the manager works on."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Lifecycle, as in nexus.v1.JobState.
PENDING, PREPARING, SEARCHING, FINALIZING = "PENDING", "PREPARING", "SEARCHING", "FINALIZING"
COMPLETED, FAILED, CANCELLED = "COMPLETED", "FAILED", "CANCELLED"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})
ACTIVE = (PENDING, PREPARING, SEARCHING, FINALIZING)

TRIAL_STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


@dataclass
class JobSpecRecord:
    target: str
    use_case: str = ""
    max_trials: int = 0
    time_budget_seconds: float = 0.0
    metric: str = ""
    seed: int = 0
    filename: str = ""
    constraints_json: str = ""
    drop_columns: list[str] = field(default_factory=list)


@dataclass
class JobRecord:
    job_id: str
    spec: JobSpecRecord
    state: str = PENDING
    message: str = ""
    created_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    seed: int = 0
    node_id: str = ""
    dataset_sha256: str = ""
    dataset_bytes: int = 0
    encoding: str = ""
    task: str = ""                      # regression | binary | multiclass
    metric: str = ""
    maximize: bool = True
    study_name: str = ""
    profile: dict[str, Any] = field(default_factory=dict)
    constraints: dict[str, Any] = field(default_factory=dict)
    constraints_source: str = ""       # llm | heuristic | user
    constraints_model: str = ""        # Gemini model whose answer is the base, if any
    constraints_rationale: str = ""
    constraints_fallback: str = ""     # why the LLM's constraints were not used
    prepared: dict[str, Any] = field(default_factory=dict)   # prepare task's output + blob ids
    trials: dict[str, int] = field(default_factory=dict)     # Optuna state name -> count
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_trial: int | None = None
    model_id: str = ""
    test_metrics: dict[str, float] = field(default_factory=dict)
    feature_importance: dict[str, float] = field(default_factory=dict)
    summary: str = ""
    summary_source: str = ""           # llm | template
    summary_model: str = ""
    summary_fallback: str = ""         # why the template summary was used
    evaluated_model_rows: int = 0      # rows of the fit that test_metrics score
    test_rows: int = 0                 # held-out rows test_metrics were measured on
    final_model_rows: int = 0          # rows the served model was refitted on
    cancel_requested: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JobRecord":
        d = dict(d)
        spec = JobSpecRecord(**d.pop("spec"))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(spec=spec, **{k: v for k, v in d.items() if k in known})

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass
class ModelRecord:
    model_id: str
    job_id: str
    task: str
    target: str
    input_columns: list[str]
    classes: list[str]
    test_metrics: dict[str, float]
    artifact_sha256: str
    artifact_bytes: int
    created_at: float
    family: str = "mlp"
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelRecord":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
