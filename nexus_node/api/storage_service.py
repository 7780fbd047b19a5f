"""Optuna's ``StorageService`` on a node, with its reads answered on the event loop.

The protocol is Optuna's gRPC storage protocol (proto/api.proto: what ``optuna.storages.
GrpcStorageProxy`` speaks); :data:`CALLS` translates each method to Optuna's public
``BaseStorage`` API and back (study/wire.py), mapping storage errors to status codes as Optuna's
own server does (``KeyError``: NOT_FOUND, a duplicated study: ALREADY_EXISTS, a finished trial:
FAILED_PRECONDITION, a bad value: INVALID_ARGUMENT).

Reads never wait for the network (the journal is applied locally, study/study_db.py), so they
run on the loop itself. No lock of the node's storage is held across a consensus round, so a
read cannot block the loop behind a write that is waiting for the loop to commit it (a storage
that holds one, as Optuna's ``JournalStorage`` does, is served with a second one for reads).
A read sees this node's own writes: a write returns only once this node has applied it. Reads whose answer grows with the study
(GetTrials, GetAllStudies) use the same storage from the pool instead. (Running every call on
a pool cost a hand-off to a thread and back for each of the four reads and three writes a
trivial trial makes.)

Writes run on the pool, where they wait for consensus (study/replicated_storage.py). A write
that took effect through a snapshot the node installed while it waited cannot tell its outcome
(``OutcomeUnknown``): UNAVAILABLE, for the client to look before it retries.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import Executor
from typing import Any, Callable

import grpc
from optuna.distributions import json_to_distribution
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.storages import BaseStorage

from nexus_node._generated import api_pb2 as pb
from nexus_node._generated import api_pb2_grpc
from nexus_node.jobs.records import JOB_STUDY_PREFIX, JobRecord
from nexus_node.study import wire
from nexus_node.study.journal import OutcomeUnknown

#: StorageService methods that read one record of the study: answered on the loop.
READS = frozenset({
    "GetStudyIdFromName", "GetStudyNameFromId", "GetStudyDirections", "GetStudyUserAttributes",
    "GetStudySystemAttributes", "GetTrialIdFromStudyIdTrialNumber", "GetTrial",
})
#: Reads whose answer grows with the study (a new client's first GetTrials converts every
#: trial): on the pool, over the loop's storage, so that they never hold up the loop's Raft
#: ticks and heartbeats. Its lock is held only while the reply's list is built, never across
#: a consensus round, so neither side waits long for the other.
BULK_READS = frozenset({"GetAllStudies", "GetTrials"})
METHODS = tuple(pb.DESCRIPTOR.services_by_name["StorageService"].methods_by_name)


def _create_new_study(st: BaseStorage, r: Any) -> Any:
    return pb.CreateNewStudyReply(study_id=st.create_new_study(wire.directions_from_proto(r.directions), r.study_name))


def _get_all_studies(st: BaseStorage, r: Any) -> Any:
    # A listed study carries no public id: its name finds it.
    return pb.GetAllStudiesReply(studies=[wire.study_to_proto(s, st.get_study_id_from_name(s.study_name))
                                          for s in st.get_all_studies()])


def _create_new_trial(st: BaseStorage, r: Any) -> Any:
    template = None if r.template_trial_is_none else wire.trial_from_proto(r.template_trial)
    return pb.CreateNewTrialReply(trial_id=st.create_new_trial(r.study_id, template))


def _set_trial_state_values(st: BaseStorage, r: Any) -> Any:
    updated = st.set_trial_state_values(r.trial_id, wire.state_from_proto(r.state), list(r.values) or None)
    return pb.SetTrialStateValuesReply(trial_updated=updated)


def _get_trial(st: BaseStorage, r: Any) -> Any:
    return pb.GetTrialReply(trial=wire.trial_to_proto(st.get_trial(r.trial_id), r.trial_id))


def _get_trials(st: BaseStorage, r: Any) -> Any:
    """The study's trials whose id is above ``trial_id_greater_than`` or listed (the ones a
    client has not cached finished). A trial's id comes from its number: FrozenTrial has no
    public id."""
    wanted = set(r.included_trial_ids)
    out = []
    for t in st.get_all_trials(r.study_id, deepcopy=False):
        trial_id = st.get_trial_id_from_study_id_trial_number(r.study_id, t.number)
        if trial_id > r.trial_id_greater_than or trial_id in wanted:
            out.append(wire.trial_to_proto(t, trial_id))
    return pb.GetTrialsReply(trials=out)


#: Each method: the storage call its request makes, and the reply it gives.
CALLS: dict[str, Callable[[BaseStorage, Any], Any]] = {
    "CreateNewStudy": _create_new_study,
    "DeleteStudy": lambda st, r: (st.delete_study(r.study_id), pb.DeleteStudyReply())[1],
    "SetStudyUserAttribute": lambda st, r: (
        st.set_study_user_attr(r.study_id, r.key, json.loads(r.value)), pb.SetStudyUserAttributeReply())[1],
    "SetStudySystemAttribute": lambda st, r: (
        st.set_study_system_attr(r.study_id, r.key, json.loads(r.value)), pb.SetStudySystemAttributeReply())[1],
    "GetStudyIdFromName": lambda st, r: pb.GetStudyIdFromNameReply(study_id=st.get_study_id_from_name(r.study_name)),
    "GetStudyNameFromId": lambda st, r: pb.GetStudyNameFromIdReply(study_name=st.get_study_name_from_id(r.study_id)),
    "GetStudyDirections": lambda st, r: pb.GetStudyDirectionsReply(
        directions=wire.directions_to_proto(st.get_study_directions(r.study_id))),
    "GetStudyUserAttributes": lambda st, r: pb.GetStudyUserAttributesReply(
        user_attributes=wire.attrs_to_proto(st.get_study_user_attrs(r.study_id))),
    "GetStudySystemAttributes": lambda st, r: pb.GetStudySystemAttributesReply(
        system_attributes=wire.attrs_to_proto(st.get_study_system_attrs(r.study_id))),
    "GetAllStudies": _get_all_studies,
    "CreateNewTrial": _create_new_trial,
    "SetTrialParameter": lambda st, r: (st.set_trial_param(
        r.trial_id, r.param_name, r.param_value_internal, json_to_distribution(r.distribution)),
        pb.SetTrialParameterReply())[1],
    "GetTrialIdFromStudyIdTrialNumber": lambda st, r: pb.GetTrialIdFromStudyIdTrialNumberReply(
        trial_id=st.get_trial_id_from_study_id_trial_number(r.study_id, r.trial_number)),
    "SetTrialStateValues": _set_trial_state_values,
    "SetTrialIntermediateValue": lambda st, r: (
        st.set_trial_intermediate_value(r.trial_id, r.step, r.intermediate_value),
        pb.SetTrialIntermediateValueReply())[1],
    "SetTrialUserAttribute": lambda st, r: (
        st.set_trial_user_attr(r.trial_id, r.key, json.loads(r.value)), pb.SetTrialUserAttributeReply())[1],
    "SetTrialSystemAttribute": lambda st, r: (
        st.set_trial_system_attr(r.trial_id, r.key, json.loads(r.value)), pb.SetTrialSystemAttributeReply())[1],
    "GetTrial": _get_trial,
    "GetTrials": _get_trials,
}


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


def _answer(name: str, storage: Callable[[], BaseStorage], request: Any) -> Any:
    """``call``'s reply on ``storage``, or the storage's error as the status Optuna's server
    gives it."""
    try:
        return CALLS[name](storage(), request)
    except DuplicatedStudyError as e:
        raise _Aborted(grpc.StatusCode.ALREADY_EXISTS, str(e)) from None
    except UpdateFinishedTrialError as e:
        raise _Aborted(grpc.StatusCode.FAILED_PRECONDITION, str(e)) from None
    except KeyError as e:
        raise _Aborted(grpc.StatusCode.NOT_FOUND, str(e)) from None
    except ValueError as e:
        raise _Aborted(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
    except OutcomeUnknown as e:
        raise _Aborted(grpc.StatusCode.UNAVAILABLE, str(e)) from None


class StudyOwners:
    """Which job study (named :data:`JOB_STUDY_PREFIX` + a job id) a write would change, found
    through Optuna's public storage API.

    The node's storage says which study a trial is in (``study_of_trial``, an index lookup).
    Over another storage, a trial is matched to its study by number: ``get_trial`` gives the
    trial's number, and a study holds the trial if its trial of that number has this id; the
    answer is kept per trial id (a trial never moves to another study). A target that does
    not exist is no job study: Optuna's own servicer then answers NOT_FOUND as usual.

    Args:
        reads: The current reading storage, asked for at each use.
    """

    def __init__(self, reads: Callable[[], BaseStorage]) -> None:
        self._current = reads
        self._trials: dict[int, str | None] = {}

    def study_written(self, method: str, request: Any) -> str | None:
        """The name of the job study ``method`` with ``request`` writes, if it writes one."""
        reads = self._current()
        try:
            if method == "CreateNewStudy":
                name = request.study_name
            elif hasattr(request, "study_id"):
                name = reads.get_study_name_from_id(request.study_id)
            else:
                if hasattr(reads, "study_of_trial"):
                    return self._study_of_trial(request.trial_id)
                if request.trial_id not in self._trials:
                    self._trials[request.trial_id] = self._study_of_trial(request.trial_id)
                return self._trials[request.trial_id]
        except KeyError:
            return None
        return name if name.startswith(JOB_STUDY_PREFIX) else None

    def exists(self, study: str) -> bool:
        """Whether a study of that name exists (on this node's applied journal)."""
        try:
            self._current().get_study_id_from_name(study)
        except KeyError:
            return False
        return True

    def _study_of_trial(self, trial_id: int) -> str | None:
        reads = self._current()
        study_of_trial = getattr(reads, "study_of_trial", None)
        if study_of_trial is not None:
            name = reads.get_study_name_from_id(study_of_trial(trial_id))
            return name if name.startswith(JOB_STUDY_PREFIX) else None
        number = reads.get_trial(trial_id).number
        for study in reads.get_all_studies():
            if study.study_name.startswith(JOB_STUDY_PREFIX):
                study_id = reads.get_study_id_from_name(study.study_name)
                try:
                    if reads.get_trial_id_from_study_id_trial_number(study_id, number) == trial_id:
                        return study.study_name
                except KeyError:
                    continue
        return None


def job_study_refusal(method: str, study: str, job: JobRecord, study_exists: bool) -> _Aborted | None:
    """Whether a write on ``job``'s study is refused whatever the credential, and how.

    The cluster's own writes of a job's study never take these paths: the coordinator
    creates the study, asks for trials and fails lost ones through its own storage object,
    and runners end their trials through ``RunnerService``; through this service runners
    write only a running trial's values and attributes (a pruner's rung marks). So a job's
    study is never deleted nor created here, and once the job has ended nothing in it changes:
    a user deleting it, or adding or changing trials, would leave a COMPLETED job whose
    trials, best configuration and model no longer agree with its study. Reads stay open.
    """
    owner = f"study {study!r} belongs to job {job.job_id} ({job.state}) and is written only by the cluster"
    advice = (f"read it freely (optuna.load_study), or write a study of your own (a name not starting "
              f"with {JOB_STUDY_PREFIX!r})")
    if method == "CreateNewStudy":
        if study_exists:   # what Optuna answers, so that create_study(load_if_exists=True) loads it
            return _Aborted(grpc.StatusCode.ALREADY_EXISTS, f"{owner}; it exists: load it")
        return _Aborted(grpc.StatusCode.FAILED_PRECONDITION, f"{method}: {owner}, which creates it; {advice}")
    if method == "DeleteStudy":
        return _Aborted(grpc.StatusCode.FAILED_PRECONDITION,
                        f"{method}: {owner}: it holds the job's trials for as long as the job exists; {advice}")
    if job.terminal:
        return _Aborted(grpc.StatusCode.FAILED_PRECONDITION,
                        f"{method}: {owner}, and the job has ended, so its trials are final; {advice}")
    return None


def add_storage_service(server: grpc.aio.Server, writes: Callable[[], BaseStorage], reads: Callable[[], BaseStorage],
                        pool: Executor, writes_job_studies: Callable[[Any], bool] = lambda metadata: True,
                        job_of_study: Callable[[str], JobRecord | None] = lambda name: None) -> None:
    """Serves Optuna's StorageService on ``server``.

    Args:
        writes: The node's storage for writes (called on ``pool``).
        reads: The storage for reads (point reads on the loop, bulk reads on ``pool``): the
            node's own, or, over a storage whose lock a write holds while it waits, a second
            storage over the same data that no write uses.
        pool: Where writes wait for consensus.
        writes_job_studies: Whether a call with this metadata may write the studies of Nexus
            jobs (the node's runners and coordinator hold the peer secret). Anyone else who
            may write (a submit token) writes only studies of their own: a client that could
            add a COMPLETE trial to a job's study, or change a running one, would choose the
            job's best configuration and so the model it serves (issue 18).
        job_of_study: The job whose study a name is (the applied records). Even the peer
            secret, or anyone on a node without credentials, may not make the writes
            :func:`job_study_refusal` refuses (FAILED_PRECONDITION). Studies of no job stay
            fully writable: the cluster is a replicated Optuna storage for anyone.
    """
    owners = StudyOwners(reads)

    def guarded(name: str) -> Callable[[Any, Any], Any]:
        def check(request: Any, metadata: Any) -> None:
            study = owners.study_written(name, request)
            if study is not None:
                if not writes_job_studies(metadata):
                    raise _Aborted(grpc.StatusCode.PERMISSION_DENIED,
                                   f"{name}: study {study!r} belongs to a Nexus job, and only the cluster's "
                                   f"own nodes and runners (the peer secret) write it; write a study of your "
                                   f"own (a name not starting with {JOB_STUDY_PREFIX!r})")
                job = job_of_study(study)
                refusal = None if job is None else job_study_refusal(name, study, job, owners.exists(study))
                if refusal is not None:
                    raise refusal

        def write(request: Any, metadata: Any) -> Any:
            check(request, metadata)
            return _answer(name, writes, request)
        return write

    def on_loop(name: str) -> Callable[..., Any]:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return _answer(name, reads, request)
            except _Aborted as a:
                await context.abort(a.code, a.details)
        return handler

    def on_pool(call: Callable[[Any, Any], Any]) -> Callable[..., Any]:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    pool, call, request, context.invocation_metadata())
            except _Aborted as a:
                await context.abort(a.code, a.details)
        return handler

    def bulk_read(name: str) -> Callable[[Any, Any], Any]:
        return lambda request, metadata: _answer(name, reads, request)

    class _Service(api_pb2_grpc.StorageServiceServicer):
        pass

    service = _Service()
    for name in METHODS:
        if name in READS:
            setattr(service, name, on_loop(name))
        elif name in BULK_READS:
            setattr(service, name, on_pool(bulk_read(name)))
        else:
            setattr(service, name, on_pool(guarded(name)))
    api_pb2_grpc.add_StorageServiceServicer_to_server(service, server)
