"""Optuna's studies and trials as messages of Optuna's gRPC storage protocol (proto/api.proto).

Both ends of ``StorageService`` in Nexus use these: the node's servicer (api/storage_service.py)
and the client proxy (study/proxy.py). The encoding is the one Optuna's own proxy and server use,
so either end also talks to Optuna's: attribute values as JSON text, parameters in their
internal representation with their distribution's JSON.

Times: Optuna 5.0 sends a trial's times as naive local time in :data:`DATETIME_FORMAT` and
parses only that; Optuna 5.1 sends UTC in ISO 8601 with its offset and parses any ISO 8601 (a
naive one as local time). Nexus sends 5.0's form, which clients of both versions read (times
are then the server's local time, as with Optuna 5.0), and reads both.

Ids: a ``FrozenTrial`` or ``FrozenStudy`` carries no public id, so the caller passes it (the
storage gives it: ``get_trial_id_from_study_id_trial_number``, ``get_study_id_from_name``).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Mapping, Sequence

from optuna.distributions import distribution_to_json, json_to_distribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from nexus_node._generated import api_pb2 as pb

DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def directions_to_proto(directions: Sequence[StudyDirection]) -> list[pb.StudyDirection]:
    return [pb.MINIMIZE if d == StudyDirection.MINIMIZE else pb.MAXIMIZE for d in directions]


def directions_from_proto(directions: Sequence[int]) -> list[StudyDirection]:
    return [StudyDirection.MINIMIZE if d == pb.MINIMIZE else StudyDirection.MAXIMIZE for d in directions]


def state_to_proto(state: TrialState) -> pb.TrialState:
    # EnumTypeWrapper.Value is untyped (protobuf ships no stubs here): it returns the number.
    value: pb.TrialState = pb.TrialState.Value(state.name)
    return value


def state_from_proto(state: int) -> TrialState:
    return TrialState[pb.TrialState.Name(state)]


def attrs_to_proto(attrs: dict[str, Any]) -> dict[str, str]:
    return {key: json.dumps(value) for key, value in attrs.items()}


def attrs_from_proto(attrs: Mapping[str, str]) -> dict[str, Any]:
    return {key: json.loads(value) for key, value in attrs.items()}


def _time(t: datetime | None) -> str:
    return t.strftime(DATETIME_FORMAT) if t else ""


def _parse_time(text: str) -> datetime | None:
    """A time in either form (see the module docstring), as naive local time (as Optuna's
    storages give times)."""
    if not text:
        return None
    t = datetime.fromisoformat(text)
    return t.astimezone().replace(tzinfo=None) if t.tzinfo is not None else t


def trial_to_proto(trial: FrozenTrial, trial_id: int) -> pb.Trial:
    return pb.Trial(
        trial_id=trial_id, number=trial.number, state=state_to_proto(trial.state), values=trial.values,
        datetime_start=_time(trial.datetime_start), datetime_complete=_time(trial.datetime_complete),
        params={k: trial.distributions[k].to_internal_repr(v) for k, v in trial.params.items()},
        distributions={k: distribution_to_json(d) for k, d in trial.distributions.items()},
        user_attributes=attrs_to_proto(trial.user_attrs), system_attributes=attrs_to_proto(trial.system_attrs),
        intermediate_values=dict(trial.intermediate_values),
    )


def trial_from_proto(msg: pb.Trial) -> FrozenTrial:
    distributions = {k: json_to_distribution(v) for k, v in msg.distributions.items()}
    return FrozenTrial(
        number=msg.number, state=state_from_proto(msg.state), value=None, values=list(msg.values) or None,
        datetime_start=_parse_time(msg.datetime_start), datetime_complete=_parse_time(msg.datetime_complete),
        params={k: distributions[k].to_external_repr(v) for k, v in msg.params.items()},
        distributions=distributions, user_attrs=attrs_from_proto(msg.user_attributes),
        system_attrs=attrs_from_proto(msg.system_attributes),
        intermediate_values=dict(msg.intermediate_values), trial_id=msg.trial_id,
    )


class StudyRecord:
    """A study as ``BaseStorage.get_all_studies`` lists it, for a storage that is not Optuna's.

    Optuna's storages return its ``FrozenStudy``, which Optuna 5.0 and 5.1 do not export (its
    docs name ``optuna.study.FrozenStudy``, which does not exist), so this has the same
    attributes. ``_study_id`` is the name Optuna's own callers read the id by
    (``optuna.get_all_study_summaries``, and optuna-dashboard): this class provides it for them.
    """

    def __init__(self, study_id: int, study_name: str, directions: list[StudyDirection],
                 user_attrs: dict[str, Any], system_attrs: dict[str, Any]) -> None:
        self._study_id = study_id
        self.study_name = study_name
        self.directions = directions
        self.user_attrs = user_attrs
        self.system_attrs = system_attrs

    @property
    def direction(self) -> StudyDirection:
        if len(self.directions) > 1:
            raise RuntimeError("This attribute is not available during multi-objective optimization.")
        return self.directions[0]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StudyRecord) and vars(other) == vars(self)

    def __lt__(self, other: "StudyRecord") -> bool:
        return self._study_id < other._study_id

    __hash__ = None   # type: ignore[assignment]  # mutable, as FrozenStudy

    def __repr__(self) -> str:
        return f"StudyRecord({self._study_id}, {self.study_name!r})"


def study_to_proto(study: Any, study_id: int) -> pb.Study:
    """``study``: what a storage's ``get_all_studies`` lists (``study_name``, ``directions``,
    ``user_attrs``, ``system_attrs``)."""
    return pb.Study(study_id=study_id, study_name=study.study_name, directions=directions_to_proto(study.directions),
                    user_attributes=attrs_to_proto(study.user_attrs),
                    system_attributes=attrs_to_proto(study.system_attrs))


def study_from_proto(msg: pb.Study) -> StudyRecord:
    return StudyRecord(msg.study_id, msg.study_name, directions_from_proto(msg.directions),
                       attrs_from_proto(msg.user_attributes), attrs_from_proto(msg.system_attributes))
