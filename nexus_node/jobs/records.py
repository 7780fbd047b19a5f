"""Domain records for jobs and models. Protobuf stops at the servicer; these are what the
store persists and the manager works on."""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

# Lifecycle, as in nexus.v1.JobState.
PENDING, PREPARING, SEARCHING, FINALIZING = "PENDING", "PREPARING", "SEARCHING", "FINALIZING"
COMPLETED, FAILED, CANCELLED = "COMPLETED", "FAILED", "CANCELLED"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})
ACTIVE = (PENDING, PREPARING, SEARCHING, FINALIZING)

TRIAL_STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
#: Every job's Optuna study is named this plus the job id. Only the node's runners and
#: coordinator (the peer secret) write such studies; clients may write studies of their own.
JOB_STUDY_PREFIX = "nexus-"


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
    # How the upload is read (nexus_node.pipeline.tableformat.TableFormat.to_dict): detected
    # at submit, given to preparation so that it reads the file the same way.
    input_format: dict[str, str] = field(default_factory=dict)
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
    members: list[dict[str, Any]] = field(default_factory=list)   # {trial, family, weight, epochs_trained}
    model_selection: str = ""          # why the model is that ensemble or that single trial
    cancel_requested: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JobRecord":
        """The record ``d`` encodes (from :meth:`to_dict`; unknown keys are ignored).

        Raises:
            ValueError: a field has the wrong type (``created_at: "yesterday"``), a time is
                not finite, or the state is not a job state (see :func:`check_fields`).
        """
        check_fields(cls, d)
        d = dict(d)
        spec = JobSpecRecord(**{k: v for k, v in d.pop("spec").items() if k in _field_names(JobSpecRecord)})
        known = _field_names(cls)
        job = cls(spec=spec, **{k: v for k, v in d.items() if k in known})
        if job.state not in JOB_STATES:
            raise ValueError(f"state {job.state!r} is not a job state")
        return job

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
    members: list[dict[str, Any]] = field(default_factory=list)   # {trial, family, weight, epochs_trained}
    selection: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelRecord":
        """The record ``d`` encodes.

        Raises:
            ValueError: a field is missing or has the wrong type (see :func:`check_fields`).
        """
        check_fields(cls, d)
        known = _field_names(cls)
        return cls(**{k: v for k, v in d.items() if k in known})


JOB_STATES = frozenset(ACTIVE) | TERMINAL

#: Fields that are times (``time.time()``): finite, since ``nexus jobs`` sorts and prints them.
_TIMES = frozenset({"created_at", "started_at", "finished_at"})


_FIELD_NAMES: dict[type, frozenset[str]] = {}


def _field_names(cls: type) -> frozenset[str]:
    got = _FIELD_NAMES.get(cls)
    if got is None:
        got = _FIELD_NAMES[cls] = frozenset(f.name for f in dataclasses.fields(cls))
    return got


def _is_number(value: object) -> bool:
    # JSON gives 3 for 3.0 written by an older node; bool is an int but never a number here.
    return type(value) in (int, float)


class _Bad(Exception):
    """A value that is not of its type: where in it (``[2]``, `` key``) and what is wrong."""

    def __init__(self, path: str, problem: str) -> None:
        self.path, self.problem = path, problem


def _check_value(where: str, tp: Any, value: object) -> None:
    try:
        _checker(tp)(value)
    except _Bad as bad:
        raise ValueError(f"{where}{bad.path}{bad.problem}") from None


@functools.cache
def _checker(tp: Any) -> Callable[[object], None]:
    """The check of a value against type ``tp``, built once per type: a node applies every
    record it replays through these, field by field (a restart replays thousands)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return lambda value: None
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        nullable = type(None) in args
        (inner,) = [a for a in args if a is not type(None)]
        inner_check = _checker(inner)

        def union(value: object) -> None:
            if not (value is None and nullable):
                inner_check(value)
        return union
    if tp is float or tp is int or tp in (str, bool):
        name = "a number" if tp is float else getattr(tp, "__name__", str(tp))
        ok: Callable[[object], bool] = _is_number if tp is float else (lambda v: type(v) is tp)

        def leaf(value: object) -> None:
            if not ok(value):
                raise _Bad("", f" must be {name}, not {type(value).__name__} {value!r:.40}")
        return leaf
    if origin is list:
        (item,) = typing.get_args(tp)
        item_check = _checker(item)

        def of_list(value: object) -> None:
            if type(value) is not list:
                raise _Bad("", " must be a list")
            for i, v in enumerate(value):
                try:
                    item_check(v)
                except _Bad as bad:
                    raise _Bad(f"[{i}]{bad.path}", bad.problem) from None
        return of_list
    if origin is dict:
        key, item = typing.get_args(tp)
        key_check, item_check = _checker(key), _checker(item)

        def of_dict(value: object) -> None:
            if type(value) is not dict:
                raise _Bad("", " must be an object")
            for k, v in value.items():
                try:
                    key_check(k)
                except _Bad as bad:
                    raise _Bad(f" key{bad.path}", bad.problem) from None
                try:
                    item_check(v)
                except _Bad as bad:
                    raise _Bad(f"[{k!r:.40}]{bad.path}", bad.problem) from None
        return of_dict
    if dataclasses.is_dataclass(tp):
        def record(value: object) -> None:
            if type(value) is not dict:
                raise _Bad("", " must be an object")
            check_fields(tp, value)  # type: ignore[arg-type]
        return record
    raise TypeError(f"no check for values of type {tp}")   # a field type this checker does not know yet


def check_fields(cls: type, d: object) -> None:
    """Checks that ``d`` (a record's dict, as a peer sent it) gives every field of dataclass
    ``cls`` its declared type, and every required field: a string where a time belongs would
    otherwise be applied on every node and break every reader of the record.

    Times (``created_at``...) must be finite numbers. Keys ``cls`` does not know are left alone
    (a newer node may add fields; :meth:`JobRecord.from_dict` drops them).

    Raises:
        ValueError: what is wrong, naming the field.
    """
    if type(d) is not dict:
        raise ValueError(f"a {cls.__name__} must be an object")
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in d:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{cls.__name__}.{f.name} is missing")
            continue
        value = d[f.name]
        _check_value(f"{cls.__name__}.{f.name}", hints[f.name], value)
        if f.name in _TIMES and not math.isfinite(value):
            raise ValueError(f"{cls.__name__}.{f.name} must be a finite time, not {value!r}")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    got = _HINTS.get(cls)
    if got is None:
        got = _HINTS[cls] = typing.get_type_hints(cls)
    return got
