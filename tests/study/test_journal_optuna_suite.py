"""Optuna's own storage test suite against JournalStorage over the replicated journal.

A 3-node cluster runs on an event loop in a background thread for the whole module (Optuna's
tests are synchronous, as Optuna's storage API is). Each test gets a JournalStorage over a fresh
named journal of a *follower*, so every write takes the longer path: forwarded to the leader,
committed by a majority, applied on the follower before ``append_logs`` returns.

This is the in-process form; the issue's final form runs the suite through the gRPC
``StorageService`` of a real 3-process cluster.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any, Iterator

import pytest
from optuna.storages import JournalStorage
from optuna.testing.pytest_storages import StorageTestCase

from nexus_node.study.batches import BatchedJournalStorage
from tests.consensus.driver_cluster import MeshCluster

_names = itertools.count()


@pytest.fixture(scope="module")
def follower(tmp_path_factory) -> Iterator[Any]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="mesh-loop", daemon=True)
    thread.start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    cluster = run(MeshCluster(tmp_path_factory.mktemp("suite")).start())
    try:
        leader = run(cluster.leader())
        yield next(n for n in cluster.nodes if n is not leader)
    finally:
        run(cluster.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


class TestReplicatedJournalStorage(StorageTestCase):
    @pytest.fixture
    def storage(self, follower) -> JournalStorage:
        return JournalStorage(follower.journal.backend(f"suite-{next(_names)}"))


class TestBatchedReplicatedJournalStorage(StorageTestCase):
    """The node's own storage class (study/batches.py): outside a batch, it is JournalStorage."""

    @pytest.fixture
    def storage(self, follower) -> BatchedJournalStorage:
        return BatchedJournalStorage(follower.journal.backend(f"suite-{next(_names)}"))
