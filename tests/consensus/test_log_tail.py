"""The log's data in memory is bounded (consensus/log_store.py ``MEMORY_ENTRIES``): older
entries keep their index and term, and their data is read back from the file, identical."""

from __future__ import annotations

import pytest

from nexus_node.consensus import log_store
from nexus_node.consensus.log_store import RaftLogStore
from nexus_node.consensus.raft import Entry, EntryType, HardState


def entry(index: int, term: int = 1) -> Entry:
    return Entry(index, term, EntryType.NORMAL, f"data of {index} in term {term}".encode() * 3, f"p{index}-{term}")


@pytest.fixture
def small(monkeypatch):
    monkeypatch.setattr(log_store, "MEMORY_ENTRIES", 10)


async def test_old_entries_are_thin_in_memory_and_read_back_whole(tmp_path, small):
    store = await RaftLogStore.open(tmp_path / "raft.db")
    try:
        await store.save(HardState(1, "a", 0), [entry(i) for i in range(1, 41)])
        held = store._cache._log   # what the process holds
        assert sum(1 for e in held if e.data) == 10 and len(held) == 41
        assert store.entries(1, 41) == [entry(i) for i in range(1, 41)]
        assert store.entries(25, 33) == [entry(i) for i in range(25, 33)]
        assert [store.term(i) for i in (1, 20, 40)] == [1, 1, 1]
        # A follower's conflicting suffix replaces thin entries too: new data, in memory.
        await store.save(HardState(2, "b", 0), [entry(i, 2) for i in range(15, 20)])
        assert store.last_index() == 19
        assert store.entries(1, 20) == [entry(i) for i in range(1, 15)] + [entry(i, 2) for i in range(15, 20)]
    finally:
        await store.close()
    # Reopened: the same log, the newest in memory again.
    again = await RaftLogStore.open(tmp_path / "raft.db")
    try:
        assert again.entries(1, 20) == [entry(i) for i in range(1, 15)] + [entry(i, 2) for i in range(15, 20)]
        assert sum(1 for e in again._cache._log if e.data) == 10
    finally:
        await again.close()
