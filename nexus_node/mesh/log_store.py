"""The Raft log and hard state on disk (SQLite through aiosqlite), with the cache the core reads.

The core reads :class:`~nexus_node.mesh.raft.Storage` synchronously and often (terms for the
consistency check, entries for MsgApp), so :class:`RaftLogStore` keeps the whole persisted log in
memory (a :class:`~nexus_node.mesh.raft.MemoryStorage`) and serves reads from it. Writes happen
only in the driver's persist step (:meth:`RaftLogStore.save`): one SQLite transaction per Ready,
committed with ``synchronous=FULL`` so that it is on disk before any message of that Ready is
sent (Raft §5.2, §5.3: a forgotten vote or acknowledged entry breaks safety). The cache is updated
after the commit, so it never holds anything the disk does not.

Each aiosqlite call is a hand-off to the connection's thread and a wake-up of the loop, so a
save makes as few as it can: the entries in one ``executemany``, the commit, and only when
needed a ``DELETE`` (a follower's conflicting suffix) and the hard state (a new term or vote).

No compaction yet (the core has no snapshots), so the log and its cache grow with the cluster's
history; the state machine is rebuilt at start-up by re-applying the committed log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import aiosqlite

from nexus_node.mesh.raft import Entry, EntryType, HardState, MemoryStorage
from nexus_node.mesh.raft.messages import EMPTY_HARD_STATE

_SCHEMA = """
CREATE TABLE IF NOT EXISTS raft_hard_state (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    term INTEGER NOT NULL,
    vote TEXT,
    commit_index INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS raft_log (
    idx INTEGER PRIMARY KEY,
    term INTEGER NOT NULL,
    type TEXT NOT NULL,
    data BLOB NOT NULL,
    proposal_id TEXT
);
"""


class RaftLogStore:
    """A :class:`~nexus_node.mesh.raft.Storage` persisted in SQLite.

    Reads (the five Storage methods) are synchronous and served from memory; the only write is
    the async :meth:`save`. One driver task owns an instance: it is not safe to call
    :meth:`save` concurrently.

    Use :meth:`open` to build one.
    """

    def __init__(self, db: aiosqlite.Connection, cache: MemoryStorage) -> None:
        self._db = db
        self._cache = cache
        self._commit_dirty = False   # the cached commit index is ahead of the disk's
        self._closed = False

    async def _write_hard_state(self, h: HardState) -> None:
        await self._db.execute(
            "INSERT OR REPLACE INTO raft_hard_state (id, term, vote, commit_index) VALUES (0, ?, ?, ?)",
            (h.term, h.vote, h.commit))

    @classmethod
    async def open(cls, path: Path) -> "RaftLogStore":
        """Opens (creating if needed) the log at ``path`` and loads it into memory.

        Args:
            path: The SQLite file; its directory must exist.

        Returns:
            The store, holding exactly what a previous run persisted.
        """
        db = await aiosqlite.connect(path)
        # WAL lets a commit be one sequential write; FULL makes each commit fsync, which the
        # persist-before-send rule needs (NORMAL would only be durable at checkpoints).
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.executescript(_SCHEMA)
        await db.commit()
        cache = MemoryStorage()
        async with db.execute("SELECT idx, term, type, data, proposal_id FROM raft_log ORDER BY idx") as cur:
            entries = [Entry(int(i), int(t), EntryType(ty), bytes(d), p) async for i, t, ty, d, p in cur]
        for expected, e in enumerate(entries, start=1):
            if e.index != expected:
                await db.close()
                raise ValueError(f"{path}: raft log has a gap before index {e.index}")
        cache.append(entries)
        async with db.execute("SELECT term, vote, commit_index FROM raft_hard_state") as cur:
            row = await cur.fetchone()
        if row is not None:
            cache.set_hard_state(HardState(int(row[0]), row[1], int(row[2])))
        return cls(db, cache)

    async def close(self) -> None:
        """Writes a commit index not yet on disk, then closes the database connection.
        Closing twice (a failed disk write already ended the driver) does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._commit_dirty:
                # Lazy by design: a commit index is re-learned from the leader if this is lost.
                await self._write_hard_state(self._cache.hard_state())
                await self._db.commit()
                self._commit_dirty = False
        finally:
            await self._db.close()

    def is_empty(self) -> bool:
        """Whether nothing was ever persisted (a brand-new node)."""
        return self._cache.last_index() == 0 and self._cache.hard_state() == EMPTY_HARD_STATE

    async def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        """Persists a Ready's entries then its hard state, durably, in one transaction.

        Entries replace every held entry at or after ``entries[0].index`` (a follower's
        conflicting suffix, §5.3), as :meth:`MemoryStorage.append` does.

        Args:
            hard_state: New hard state, or None if unchanged.
            entries: Entries to append, contiguous and ascending.
        """
        if not entries and hard_state is None:
            return
        held = self._cache.hard_state()
        if not entries and hard_state is not None and (hard_state.term, hard_state.vote) == (held.term, held.vote):
            # Only the commit index moved. Nothing depends on it being on disk (a restarted
            # node learns it again from the leader; a lower one only means replaying less at
            # start), so, as etcd does, it waits for the next write that must be durable
            # instead of costing an fsync of its own.
            self._cache.set_hard_state(hard_state)
            self._commit_dirty = True
            return
        if hard_state is None and self._commit_dirty:
            hard_state = self._cache.hard_state()
        if entries:
            first = entries[0].index
            if not 1 <= first <= self._cache.last_index() + 1:
                raise ValueError(f"append at {first} leaves a gap after {self._cache.last_index()}")
            if first <= self._cache.last_index():   # a follower's conflicting suffix (§5.3)
                await self._db.execute("DELETE FROM raft_log WHERE idx >= ?", (first,))
            await self._db.executemany(
                "INSERT INTO raft_log (idx, term, type, data, proposal_id) VALUES (?, ?, ?, ?, ?)",
                [(e.index, e.term, e.type.value, e.data, e.proposal_id) for e in entries],
            )
        if hard_state is not None:
            await self._write_hard_state(hard_state)
        await self._db.commit()
        self._cache.append(entries)
        if hard_state is not None:
            self._cache.set_hard_state(hard_state)
            self._commit_dirty = False

    # --- Storage (reads, from memory) -------------------------------------------------------------

    def hard_state(self) -> HardState:
        """The last persisted hard state."""
        return self._cache.hard_state()

    def first_index(self) -> int:
        """Always 1: no compaction yet."""
        return self._cache.first_index()

    def last_index(self) -> int:
        """Index of the last persisted entry, 0 if none."""
        return self._cache.last_index()

    def term(self, index: int) -> int:
        """Term of the persisted entry at ``index`` (0 at index 0)."""
        return self._cache.term(index)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Persisted entries with ``lo <= index < hi``."""
        return self._cache.entries(lo, hi)
