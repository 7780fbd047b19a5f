"""Blob files for the tests of this folder."""

from __future__ import annotations

import os
from pathlib import Path

from nexus_node.blobs.store import BlobStore
from nexus_node.consensus.driver import MeshSettings, RaftDriver
from nexus_node.jobs.events import EventHub
from nexus_node.jobs.registry import ReplicatedRecords
from tests.blocking import allow_blocking

FAST = MeshSettings(tick_interval=0.02, propose_timeout=10.0)


async def one_voter(tmp_path: Path, peers: dict[str, str] | None = None) -> tuple[RaftDriver, ReplicatedRecords, BlobStore]:
    """n1 leading a cluster of itself, with real records over it and a blob store; ``peers``:
    the addresses it knows for other node ids. (Stop the driver when done.)"""
    driver = RaftDriver("n1", "test", tmp_path / "raft.db", "127.0.0.1:1", dict(peers or {}), settings=FAST)
    records = ReplicatedRecords(driver, EventHub())
    await driver.start(["n1"])
    await driver.wait_for(lambda: driver.is_leader, 10)
    with allow_blocking():
        store = BlobStore(tmp_path / "blobs")
    return driver, records, store


def stored_blob(store: BlobStore, data: bytes, age: float) -> str:
    """Stores ``data`` as a blob last used ``age`` seconds ago; returns its hash. (The test's
    own setup, on its loop: allowed.)"""
    with allow_blocking():
        tmp = store.new_temp()
        tmp.write_bytes(data)
        sha, _ = store.ingest(tmp)
        old = store.path(sha).stat().st_mtime - age
        os.utime(store.path(sha), (old, old))
        return sha
