"""An Optuna storage that talks to a node's ``StorageService``, with a token (or, in runners, the
peer secret) attached, over TLS when asked.

Every node serves Optuna's gRPC storage protocol on its one port (proto/api.proto), so plain
Optuna code (and optuna-dashboard) can read a Nexus study::

    storage = NexusClient("host:7070").optuna_storage()
    study = optuna.load_study(study_name=job.study_name, storage=storage)

Optuna's own ``GrpcStorageProxy`` takes only a host and a port (5.0, 5.1): no credentials and no
TLS. So this is a ``BaseStorage`` of its own over the same protocol, with Optuna's proxy's
behaviour: errors as Optuna's storages raise them, and finished trials cached (a study's
``get_all_trials`` asks only for trials it has not seen finished). It also talks to Optuna's own
server (``run_grpc_proxy_server``), for which the Nexus calls (:meth:`report_steps`,
:meth:`finish_trial`) answer None.
"""

from __future__ import annotations

import copy
import json
import threading
import uuid
from typing import Any, Container, Mapping, Sequence

import grpc
from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from nexus_node._generated import api_pb2 as pb
from nexus_node._generated import api_pb2_grpc
from nexus_node._generated.nexus.v1 import nexus_pb2, runner_pb2_grpc
from nexus_node.net.auth import secure_channel
from nexus_node.net.tls import ClientTls
from nexus_node.study import wire

#: Optuna's default name prefix for a study created without a name.
DEFAULT_STUDY_NAME_PREFIX = "no-name-"

#: The exception each status of the server stands for (as Optuna's storages raise them).
_ERRORS: dict[grpc.StatusCode, type[Exception]] = {
    grpc.StatusCode.NOT_FOUND: KeyError,
    grpc.StatusCode.ALREADY_EXISTS: DuplicatedStudyError,
    grpc.StatusCode.FAILED_PRECONDITION: UpdateFinishedTrialError,
    grpc.StatusCode.INVALID_ARGUMENT: ValueError,
}


class _StudyCache:
    """One study's trials as last read: finished ones never change, so only the others and the
    new ones are asked for again."""

    def __init__(self) -> None:
        self.trials: dict[int, FrozenTrial] = {}   # by number
        self.unfinished: set[int] = set()          # trial ids
        self.last_finished = -1                    # the highest finished trial id


class NexusStorageProxy(BaseStorage):
    """An Optuna storage over a node's ``StorageService``: ``authorization: Bearer <token>`` on
    every call, over TLS when ``tls`` is given.

    Threads: calls may come from several threads (as to Optuna's proxy); the trial cache has
    its own lock. Pickling keeps the address and credentials and opens a new channel.
    """

    def __init__(self, *, host: str, port: int, token: str | None = None, tls: ClientTls | None = None) -> None:
        self._host, self._port, self._token, self._tls = host, port, token, tls
        self._missing: set[str] = set()   # RunnerService calls the server does not have
        self._setup()

    def _setup(self) -> None:
        self._channel = secure_channel(f"{self._host}:{self._port}", self._token, self._tls)
        self._stub = api_pb2_grpc.StorageServiceStub(self._channel)
        self._lock = threading.Lock()
        self._studies: dict[int, _StudyCache] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"host": self._host, "port": self._port, "token": self._token, "tls": self._tls}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._host, self._port, self._token, self._tls = state["host"], state["port"], state["token"], state["tls"]
        self._missing = set()
        self._setup()

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self._stub, method)(request)
        except grpc.RpcError as e:
            error = _ERRORS.get(e.code())
            if error is None:
                raise
            raise error(e.details()) from e

    # Studies.

    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        name = study_name if study_name is not None else DEFAULT_STUDY_NAME_PREFIX + str(uuid.uuid4())
        reply: pb.CreateNewStudyReply = self._call("CreateNewStudy", pb.CreateNewStudyRequest(
            directions=wire.directions_to_proto(directions), study_name=name))
        return reply.study_id

    def delete_study(self, study_id: int) -> None:
        self._call("DeleteStudy", pb.DeleteStudyRequest(study_id=study_id))
        with self._lock:
            self._studies.pop(study_id, None)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self._call("SetStudyUserAttribute", pb.SetStudyUserAttributeRequest(
            study_id=study_id, key=key, value=json.dumps(value)))

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self._call("SetStudySystemAttribute", pb.SetStudySystemAttributeRequest(
            study_id=study_id, key=key, value=json.dumps(value)))

    def get_study_id_from_name(self, study_name: str) -> int:
        reply: pb.GetStudyIdFromNameReply = self._call(
            "GetStudyIdFromName", pb.GetStudyIdFromNameRequest(study_name=study_name))
        return reply.study_id

    def get_study_name_from_id(self, study_id: int) -> str:
        reply: pb.GetStudyNameFromIdReply = self._call(
            "GetStudyNameFromId", pb.GetStudyNameFromIdRequest(study_id=study_id))
        return reply.study_name

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        reply = self._call("GetStudyDirections", pb.GetStudyDirectionsRequest(study_id=study_id))
        return wire.directions_from_proto(reply.directions)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        reply = self._call("GetStudyUserAttributes", pb.GetStudyUserAttributesRequest(study_id=study_id))
        return wire.attrs_from_proto(reply.user_attributes)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        reply = self._call("GetStudySystemAttributes", pb.GetStudySystemAttributesRequest(study_id=study_id))
        return wire.attrs_from_proto(reply.system_attributes)

    def get_all_studies(self) -> list[Any]:
        """The studies, as :class:`~nexus_node.study.wire.StudyRecord` (Optuna's own class for
        them is not public)."""
        return [wire.study_from_proto(s) for s in self._call("GetAllStudies", pb.GetAllStudiesRequest()).studies]

    # Trials.

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        if template_trial is None:
            request = pb.CreateNewTrialRequest(study_id=study_id, template_trial_is_none=True)
        else:   # a template's id is not read: the server gives the trial a new one
            request = pb.CreateNewTrialRequest(study_id=study_id, template_trial=wire.trial_to_proto(template_trial, 0))
        reply: pb.CreateNewTrialReply = self._call("CreateNewTrial", request)
        return reply.trial_id

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: BaseDistribution) -> None:
        self._call("SetTrialParameter", pb.SetTrialParameterRequest(
            trial_id=trial_id, param_name=param_name, param_value_internal=param_value_internal,
            distribution=distribution_to_json(distribution)))

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        reply: pb.GetTrialIdFromStudyIdTrialNumberReply = self._call(
            "GetTrialIdFromStudyIdTrialNumber", pb.GetTrialIdFromStudyIdTrialNumberRequest(
                study_id=study_id, trial_number=trial_number))
        return reply.trial_id

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        reply: pb.SetTrialStateValuesReply = self._call("SetTrialStateValues", pb.SetTrialStateValuesRequest(
            trial_id=trial_id, state=wire.state_to_proto(state), values=values))
        return reply.trial_updated

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._call("SetTrialIntermediateValue", pb.SetTrialIntermediateValueRequest(
            trial_id=trial_id, step=step, intermediate_value=intermediate_value))

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._call("SetTrialUserAttribute", pb.SetTrialUserAttributeRequest(
            trial_id=trial_id, key=key, value=json.dumps(value)))

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._call("SetTrialSystemAttribute", pb.SetTrialSystemAttributeRequest(
            trial_id=trial_id, key=key, value=json.dumps(value)))

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return wire.trial_from_proto(self._call("GetTrial", pb.GetTrialRequest(trial_id=trial_id)).trial)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        with self._lock:
            cache = self._studies.setdefault(study_id, _StudyCache())
            try:
                reply = self._call("GetTrials", pb.GetTrialsRequest(
                    study_id=study_id, included_trial_ids=sorted(cache.unfinished),
                    trial_id_greater_than=cache.last_finished))
            except KeyError:
                self._studies.pop(study_id, None)
                raise
            for msg in reply.trials:
                cache.trials[msg.number] = wire.trial_from_proto(msg)
                if wire.state_from_proto(msg.state).is_finished():
                    cache.unfinished.discard(msg.trial_id)
                    cache.last_finished = max(cache.last_finished, msg.trial_id)
                else:
                    cache.unfinished.add(msg.trial_id)
            trials = [t for _, t in sorted(cache.trials.items()) if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    # Nexus's own trial writes (RunnerService).

    def report_steps(self, trial_id: int, steps: list[tuple[int, float]]) -> bool:
        """Writes ``(step, value)`` pairs of a running trial in one call (the node's
        ``RunnerService.ReportSteps``: one journal append, one consensus round). False when the
        server is not a Nexus node (Optuna's own server): report step by step instead.

        Raises:
            UpdateFinishedTrialError: the trial is finished (as ``Trial.report`` raises).
        """
        return self._nexus_call("ReportSteps", nexus_pb2.ReportStepsRequest(
            trial_id=trial_id, steps=[nexus_pb2.TrialStep(step=s, value=v) for s, v in steps])) is not None

    def finish_trial(self, trial_id: int, steps: list[tuple[int, float]], user_attrs: Mapping[str, Any],
                     state: str, value: float | None) -> tuple[str, float | None] | None:
        """Writes a trial's last steps, its user attributes and its final state in one call
        (the node's ``RunnerService.FinishTrial``: one journal append, one consensus round).
        Returns ``(state, value)`` as recorded; None when the server is not a Nexus node:
        write them one by one instead.

        Raises:
            UpdateFinishedTrialError: the trial is finished (as ``Study.tell`` finds it).
        """
        reply = self._nexus_call("FinishTrial", nexus_pb2.FinishTrialRequest(
            trial_id=trial_id, steps=[nexus_pb2.TrialStep(step=s, value=v) for s, v in steps],
            user_attrs_json=json.dumps(dict(user_attrs)), state=state, value=value or 0.0))
        if reply is None:
            return None
        return reply.state, reply.value if reply.has_value else None

    def _nexus_call(self, method: str, request: Any) -> Any:
        """One of the node's trial-writing calls (``RunnerService``: the node's own runners only, under
        the peer secret); None if the server does not have it (asked
        once per proxy: a plain Optuna server answers UNIMPLEMENTED every time)."""
        if method in self._missing:
            return None
        try:
            return getattr(runner_pb2_grpc.RunnerServiceStub(self._channel), method)(request, timeout=60)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self._missing.add(method)
                return None
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                raise UpdateFinishedTrialError(exc.details()) from None
            raise
