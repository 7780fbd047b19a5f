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
mesh/journal.py: one writer per node lets writes from different nodes share consensus rounds).

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


def add_storage_service(server: grpc.aio.Server, writes: BaseStorage, reads: BaseStorage,
                        pool: Executor) -> None:
    """Serves Optuna's StorageService on ``server``.

    Args:
        writes: The node's storage for writes (called on ``pool``).
        reads: A storage over the same journal that no write uses (point reads on the loop,
            bulk reads on ``pool``).
        pool: Where writes wait for consensus.
    """
    write_service = OptunaStorageProxyService(writes)
    read_service = OptunaStorageProxyService(reads)

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
            setattr(service, name, on_pool(getattr(write_service, name)))
    api_pb2_grpc.add_StorageServiceServicer_to_server(service, server)
