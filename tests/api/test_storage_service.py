"""The node's StorageService: reads answered on the event loop, writes on the pool.

A real aio gRPC server on loopback, Optuna's own ``GrpcStorageProxy`` as the client (in a thread,
as a runner's is in its process), and two ``JournalStorage`` over one journal file, the way a
node holds them over its applied journal.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import GrpcStorageProxy, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from nexus_node.api.storage_service import add_storage_service
from tests.conftest import free_port


class _GatedBackend(JournalFileBackend):
    """A journal whose appends wait for a gate, as a write waits for consensus."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.threads: list[str] = []

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        super().append_logs(logs)


class _ThreadRecordingStorage(JournalStorage):
    def __init__(self, backend: JournalFileBackend) -> None:
        super().__init__(backend)
        self.threads: list[str] = []

    def get_trial(self, trial_id: int):  # type: ignore[no-untyped-def]
        self.threads.append(threading.current_thread().name)
        return super().get_trial(trial_id)

    def get_all_trials(self, study_id, deepcopy=True, states=None):  # type: ignore[no-untyped-def]
        self.threads.append("all:" + threading.current_thread().name)
        return super().get_all_trials(study_id, deepcopy, states)


@pytest.fixture
async def served(tmp_path):
    path = str(tmp_path / "journal.log")
    backend = _GatedBackend(path)
    reads = _ThreadRecordingStorage(JournalFileBackend(path))
    pool = ThreadPoolExecutor(4, thread_name_prefix="storage")
    server = grpc.aio.server()
    writes = JournalStorage(backend)
    add_storage_service(server, lambda: writes, lambda: reads, pool)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # GrpcStorageProxy is "experimental"
        client = GrpcStorageProxy(host="127.0.0.1", port=port)
    try:
        yield client, backend, reads
    finally:
        backend.gate.set()
        await server.stop(None)
        pool.shutdown(wait=False)


async def test_reads_run_on_the_loop_and_writes_on_the_pool(served) -> None:
    client, backend, reads = served
    study_id = await asyncio.to_thread(client.create_new_study, [optuna.study.StudyDirection.MINIMIZE], "s")
    trial_id = await asyncio.to_thread(client.create_new_trial, study_id)
    trial = await asyncio.to_thread(client.get_trial, trial_id)   # reads its own write at once

    assert trial.state is TrialState.RUNNING
    assert reads.threads == [threading.current_thread().name]   # the loop's thread
    assert backend.threads and all(t.startswith("storage") for t in backend.threads)
    # A read that grows with the study runs on the pool (never holding up the loop).
    assert [t.number for t in await asyncio.to_thread(client.get_all_trials, study_id)] == [0]
    assert reads.threads[-1].startswith("all:storage")


async def test_a_read_is_answered_while_a_write_waits_for_consensus(served) -> None:
    client, backend, _ = served
    study_id = await asyncio.to_thread(client.create_new_study, [optuna.study.StudyDirection.MINIMIZE], "s")
    trial_id = await asyncio.to_thread(client.create_new_trial, study_id)
    backend.entered.clear()
    backend.gate.clear()
    write = asyncio.create_task(asyncio.to_thread(client.set_trial_user_attr, trial_id, "k", 1))
    assert await asyncio.to_thread(backend.entered.wait, 30)

    # The write holds the writing storage's lock until the gate opens; the read must not
    # queue behind it (it would time out here if it did).
    trial = await asyncio.wait_for(asyncio.to_thread(client.get_trial, trial_id), 10)
    assert trial.user_attrs == {} and not write.done()

    backend.gate.set()
    await write
    assert (await asyncio.to_thread(client.get_trial, trial_id)).user_attrs == {"k": 1}


async def test_errors_keep_optunas_status_codes(served) -> None:
    client, _, _ = served
    study_id = await asyncio.to_thread(client.create_new_study, [optuna.study.StudyDirection.MINIMIZE], "s")
    trial_id = await asyncio.to_thread(client.create_new_trial, study_id)
    await asyncio.to_thread(client.set_trial_state_values, trial_id, TrialState.COMPLETE, [1.0])

    # Optuna's client turns each status into an exception and drops the message; the status
    # and its message are on the gRPC error it chains.
    with pytest.raises(KeyError) as missing:   # a read: NOT_FOUND
        await asyncio.to_thread(client.get_trial, trial_id + 100)
    assert missing.value.__cause__.code() is grpc.StatusCode.NOT_FOUND
    assert "does not exist" in missing.value.__cause__.details()
    with pytest.raises(UpdateFinishedTrialError) as finished:   # a write: FAILED_PRECONDITION
        await asyncio.to_thread(client.set_trial_user_attr, trial_id, "k", 1)
    assert finished.value.__cause__.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "finished" in finished.value.__cause__.details()
    with pytest.raises(optuna.exceptions.DuplicatedStudyError):   # ALREADY_EXISTS
        await asyncio.to_thread(client.create_new_study, [optuna.study.StudyDirection.MINIMIZE], "s")
