"""Optuna's ``StorageService`` on a node, with its reads answered on the event loop.

Optuna's own servicer (``OptunaStorageProxyService``) is synchronous, so the aio server ran every
call on a thread pool: a hand-off to a thread and back for each of the four reads and three
writes a trivial trial makes. Reads never wait for the network (the journal is applied locally),
so here they run on the loop itself, against a second ``JournalStorage`` over the same applied
journal that no write uses: its lock is never held across a consensus round, so a read cannot
block the loop behind a write that is waiting for the loop to commit it. It reads its own
writes like the first: a write returns only once this node has applied it. Reads whose answer
grows with the study (GetTrials, GetAllStudies) use the same storage from the pool instead.

Writes still run on the pool through the node's one writing ``JournalStorage`` (see
study/journal.py: one writer per node lets writes from different nodes share consensus rounds).

Both halves are Optuna's servicer methods, unchanged; only where they run differs. Their
``context.abort`` (a raising call in synchronous gRPC) is given a stand-in that raises, and the
status it carries is sent with the real aio context.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import Executor
from typing import Any, Callable, NoReturn

import grpc
from optuna.storages import BaseStorage
from optuna.storages._grpc.auto_generated import api_pb2, api_pb2_grpc
from optuna.storages._grpc.servicer import OptunaStorageProxyService

from nexus_node.jobs.records import JOB_STUDY_PREFIX

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
METHODS = tuple(api_pb2.DESCRIPTOR.services_by_name["StorageService"].methods_by_name)


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _RaisingContext:
    """What Optuna's servicer gets for ``context``: it only ever calls ``abort``."""

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise _Aborted(code, details)


_CONTEXT = _RaisingContext()


def job_study_written(method: str, request: Any, reads: BaseStorage) -> str | None:
    """The job study (named :data:`JOB_STUDY_PREFIX` + a job id) that this write would change,
    if any, found through Optuna's public storage API.

    A trial is matched to its study by number: ``get_trial`` gives the trial's number, and a
    study holds the trial if its trial of that number has this id. A target that does not exist
    is no job study: Optuna's own servicer then answers NOT_FOUND as usual.
    """
    try:
        if method == "CreateNewStudy":
            name = request.study_name
        elif hasattr(request, "study_id"):
            name = reads.get_study_name_from_id(request.study_id)
        else:
            number = reads.get_trial(request.trial_id).number
            for study in reads.get_all_studies():
                if study.study_name.startswith(JOB_STUDY_PREFIX):
                    study_id = reads.get_study_id_from_name(study.study_name)
                    try:
                        if reads.get_trial_id_from_study_id_trial_number(study_id, number) == request.trial_id:
                            return study.study_name
                    except KeyError:
                        continue
            return None
    except KeyError:
        return None
    return name if name.startswith(JOB_STUDY_PREFIX) else None


def add_storage_service(server: grpc.aio.Server, writes: BaseStorage, reads: BaseStorage,
                        pool: Executor, writes_job_studies: Callable[[Any], bool] = lambda metadata: True) -> None:
    """Serves Optuna's StorageService on ``server``.

    Args:
        writes: The node's storage for writes (called on ``pool``).
        reads: A storage over the same journal that no write uses (point reads on the loop,
            bulk reads on ``pool``).
        pool: Where writes wait for consensus.
        writes_job_studies: Whether a call with this metadata may write the studies of Nexus
            jobs (the node's runners and coordinator hold the peer secret). Anyone else who
            may write (a submit token) writes only studies of their own: a client that could
            add a COMPLETE trial to a job's study, or change a running one, would choose the
            job's best configuration and so the model it serves (issue 18).
    """
    write_service = OptunaStorageProxyService(writes)
    read_service = OptunaStorageProxyService(reads)

    def guarded(name: str, call: Callable[[Any, Any], Any]) -> Callable[[Any, Any, Any], Any]:
        def write(request: Any, context: Any, metadata: Any) -> Any:
            if not writes_job_studies(metadata):
                study = job_study_written(name, request, reads)
                if study is not None:
                    raise _Aborted(grpc.StatusCode.PERMISSION_DENIED,
                                   f"{name}: study {study!r} belongs to a Nexus job, and only the cluster's "
                                   f"own nodes and runners (the peer secret) write it; write a study of your "
                                   f"own (a name not starting with {JOB_STUDY_PREFIX!r})")
            return call(request, context)
        return write

    def on_pool_writing(call: Callable[[Any, Any, Any], Any]) -> Callable[..., Any]:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    pool, functools.partial(call, request, _CONTEXT, context.invocation_metadata()))
            except _Aborted as a:
                await context.abort(a.code, a.details)
        return handler

    def on_loop(call: Callable[[Any, Any], Any]) -> Callable[..., Any]:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return call(request, _CONTEXT)
            except _Aborted as a:
                await context.abort(a.code, a.details)
        return handler

    def on_pool(call: Callable[[Any, Any], Any]) -> Callable[..., Any]:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    pool, functools.partial(call, request, _CONTEXT))
            except _Aborted as a:
                await context.abort(a.code, a.details)
        return handler

    class _Service:
        pass

    service = _Service()
    for name in METHODS:
        if name in READS:
            setattr(service, name, on_loop(getattr(read_service, name)))
        elif name in BULK_READS:
            setattr(service, name, on_pool(getattr(read_service, name)))
        else:
            setattr(service, name, on_pool_writing(guarded(name, getattr(write_service, name))))
    api_pb2_grpc.add_StorageServiceServicer_to_server(service, server)
