"""Optuna's own storage test suite against the node's storage over the replicated journal.

A 3-node cluster runs on an event loop in a background thread for the whole module (Optuna's
tests are synchronous, as Optuna's storage API is). Each test gets the storage of a fresh
named journal of a *follower*, so every write takes the longer path: forwarded to the leader,
committed by a majority, applied into the follower's study tables before the write returns.

This is the in-process form; the issue's final form runs the suite through the gRPC
``StorageService`` of a real 3-process cluster.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any, Iterator

import pytest
from optuna.testing.pytest_storages import StorageTestCase

from nexus_node.study.replicated_storage import ReplicatedStorage
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


class TestReplicatedStorage(StorageTestCase):
    """The node's own storage (study/replicated_storage.py) over a fresh named journal."""

    @pytest.fixture
    def storage(self, follower) -> ReplicatedStorage:
        return follower.journal.storage(f"suite-{next(_names)}")
