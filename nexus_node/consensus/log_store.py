"""The Raft log and hard state on disk (SQLite through aiosqlite), with the cache the core reads.

The core reads :class:`~nexus_node.consensus.raft.Storage` synchronously and often (terms for the
consistency check, entries for MsgApp), so :class:`RaftLogStore` keeps the whole persisted log in
memory (a :class:`~nexus_node.consensus.raft.MemoryStorage`) and serves reads from it. Writes happen
only in the driver's persist step (:meth:`RaftLogStore.save`): one SQLite transaction per Ready,
committed with ``synchronous=FULL`` so that it is on disk before any message of that Ready is
sent (Raft §5.2, §5.3: a forgotten vote or acknowledged entry breaks safety). The cache is updated
after the commit, so it never holds anything the disk does not.

Each aiosqlite call is a hand-off to the connection's thread and a wake-up of the loop (about
85 µs of CPU on the 2-core test machine, against 40 µs for the SQLite work itself), so the common
save, new entries and nothing else, is one call: a multi-row ``INSERT`` in autocommit mode, which
SQLite runs as its own transaction. A follower's conflicting suffix (a ``DELETE`` first) and a new
term or vote take an explicit transaction of several calls; they are rare. The commit index known
when a batch is written goes in its rows (``commit_at``), so it reaches the disk in that same
statement; a start-up takes the highest of those and the hard state's.

No compaction yet (the core has no snapshots), so the log and its cache grow with the cluster's
history; the state machine is rebuilt at start-up by re-applying the committed log.

A damaged file is refused, never half-read: :func:`inspect` runs SQLite's ``quick_check`` and
checks the shape of what is held (indexes from 1 with no gap, terms and the hard state in range,
the commit index within the log), and :meth:`RaftLogStore.open` raises :class:`LogDamaged` for
anything SQLite or those checks reject. A node that started on a half-read log could vote or
acknowledge again in a term it already acted in (Raft §5.2), so it must not start at all.
"""

from __future__ import annotations

import asyncio
import enum
import sqlite3
from pathlib import Path
from typing import Sequence

import aiosqlite

from nexus_node.consensus.raft import Entry, EntryType, HardState, MemoryStorage
from nexus_node.consensus.raft.messages import EMPTY_HARD_STATE

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
    proposal_id TEXT,
    commit_at INTEGER NOT NULL DEFAULT 0
);
"""

#: At most this many entries go in one multi-row INSERT (6 parameters each, well under SQLite's
#: limit of 32766 variables); a longer save uses a transaction instead.
_ONE_STATEMENT_ENTRIES = 1000
_INSERT = "INSERT INTO raft_log (idx, term, type, data, proposal_id, commit_at) VALUES "
_ROW = "(?, ?, ?, ?, ?, ?)"

#: Terms and indexes are below this (as etcd bounds them to uint64, with room to spare): a
#: larger one read back means the file was damaged or written by something else.
LIMIT = 1 << 62


class LogDamaged(ValueError):
    """The Raft log file cannot be trusted: SQLite reports it damaged, or what it holds is not
    a log this node could have written. ``str()`` names the file and what is wrong."""

    def __init__(self, path: Path, problem: str) -> None:
        problem = " ".join(problem.split())   # one line, whatever SQLite said
        super().__init__(f"{path} is damaged: {problem}")
        self.path, self.problem = path, problem


class LogFile(enum.Enum):
    """What :func:`inspect` found at a log's path."""

    MISSING = "missing"   # no file
    EMPTY = "empty"       # a file with no entry and no hard state (new, or emptied)
    HELD = "held"         # a log: entries or a hard state


def _valid_hard_state(term: object, vote: object, commit: object, last_index: int) -> str | None:
    """What is wrong with a persisted hard state, or None."""
    for name, value in (("term", term), ("commit index", commit)):
        if not isinstance(value, int) or not 0 <= value < LIMIT:
            return f"the hard state's {name} is {value!r}, not an integer in [0, 2**62)"
    if vote is not None and not (isinstance(vote, str) and vote):
        return f"the hard state's vote is {vote!r}, not a node id"
    assert isinstance(commit, int)
    if commit > last_index:
        return f"the hard state's commit index {commit} is past the last entry, {last_index}"
    return None


def _inspect(path: Path) -> LogFile:
    if not path.exists():
        return LogFile.MISSING
    try:
        db = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
    except sqlite3.DatabaseError as exc:
        if not _is_damage(exc):
            raise
        raise LogDamaged(path, f"it cannot be opened ({exc})") from None
    try:
        problems = [str(r[0]) for r in db.execute("PRAGMA quick_check(3)").fetchall()]
        if problems != ["ok"]:
            said = " ".join("; ".join(problems).replace("*** in database main ***", "").split())
            raise LogDamaged(path, f"SQLite's integrity check says: {said[:300]}")
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return LogFile.EMPTY
        if not {"raft_log", "raft_hard_state"} <= tables:
            raise LogDamaged(path, f"it is not a Raft log (tables: {', '.join(sorted(tables))})")
        count, low, high, bad_terms = db.execute(
            "SELECT count(*), coalesce(min(idx), 0), coalesce(max(idx), 0), "
            "count(*) FILTER (WHERE typeof(term) != 'integer' OR term < 0 OR term >= ?) FROM raft_log",
            (LIMIT,)).fetchone()
        if count and (low != 1 or high != count):
            raise LogDamaged(path, f"its entries are not indexes 1 to {count} (they run from {low} to {high})")
        if bad_terms:
            raise LogDamaged(path, f"{bad_terms} entries have a term that is not an integer in [0, 2**62)")
        rows = db.execute("SELECT term, vote, commit_index FROM raft_hard_state").fetchall()
        if len(rows) > 1:
            raise LogDamaged(path, f"it holds {len(rows)} hard states, not one")
        if rows:
            term, vote, commit = rows[0]
            if (problem := _valid_hard_state(term, vote, commit, high)) is not None:
                raise LogDamaged(path, problem)
        return LogFile.HELD if count or rows else LogFile.EMPTY
    except sqlite3.DatabaseError as exc:
        if not _is_damage(exc):
            raise
        raise LogDamaged(path, str(exc)) from None
    finally:
        db.close()


#: SQLite errors that say nothing about the file itself: the disk is full, the file is busy,
#: permissions. Anything else an open or a read raises (SQLITE_CORRUPT, SQLITE_NOTADB, a short
#: read of a truncated file, a row of the wrong type) means the file cannot be trusted.
_NOT_DAMAGE = {"SQLITE_FULL", "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_PERM", "SQLITE_READONLY",
               "SQLITE_CANTOPEN", "SQLITE_NOMEM", "SQLITE_INTERRUPT"}


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return not any(name == n or name.startswith(n + "_") for n in _NOT_DAMAGE)


async def inspect(path: Path) -> LogFile:
    """Checks the log file at ``path`` without loading it (SQLite's ``quick_check``, then its
    shape: indexes, terms, the hard state). Runs on a thread: the check reads every page.

    Returns:
        Whether there is no file, an empty one, or a log.

    Raises:
        LogDamaged: the file is damaged or is not a Raft log; its message says what is wrong.
    """
    return await asyncio.to_thread(_inspect, path)


class RaftLogStore:
    """A :class:`~nexus_node.consensus.raft.Storage` persisted in SQLite.

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
    async def open(cls, path: Path, check: bool = False) -> "RaftLogStore":
        """Opens (creating if needed) the log at ``path`` and loads it into memory.

        Args:
            path: The SQLite file; its directory must exist.
            check: Run :func:`inspect` first (SQLite's ``quick_check`` of every page); a caller
                that just did may skip it. Loading checks the entries and the hard state either way.

        Returns:
            The store, holding exactly what a previous run persisted.

        Raises:
            LogDamaged: the file is damaged (SQLite says so, or what it holds is not a log).
        """
        if check:
            await inspect(path)
        # Autocommit: a lone statement is its own transaction; save() opens one when it needs more.
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            return await cls._load(db, path)
        except BaseException as exc:
            await db.close()
            if isinstance(exc, sqlite3.DatabaseError) and _is_damage(exc):
                raise LogDamaged(path, str(exc)) from None
            raise

    @classmethod
    async def _load(cls, db: aiosqlite.Connection, path: Path) -> "RaftLogStore":
        # WAL lets a commit be one sequential write; FULL makes each commit fsync, which the
        # persist-before-send rule needs (NORMAL would only be durable at checkpoints).
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.executescript(_SCHEMA)
        columns = {row[1] for row in await db.execute_fetchall("PRAGMA table_info(raft_log)")}
        if "commit_at" not in columns:   # a log written before the column existed
            await db.execute("ALTER TABLE raft_log ADD COLUMN commit_at INTEGER NOT NULL DEFAULT 0")
        cache = MemoryStorage()
        async with db.execute("SELECT idx, term, type, data, proposal_id FROM raft_log ORDER BY idx") as cur:
            rows = [row async for row in cur]
        entries, term = [], 0
        for expected, (i, t, ty, d, p) in enumerate(rows, start=1):
            if i != expected:
                raise LogDamaged(path, f"the log has a gap before index {i}")
            # Terms never go down along a log (Raft §5.3: the Log Matching Property).
            if not isinstance(t, int) or not term <= t < LIMIT:
                raise LogDamaged(path, f"entry {i} has term {t!r} (after term {term})")
            try:
                entries.append(Entry(i, t, EntryType(ty), bytes(d), p))
            except (TypeError, ValueError) as exc:
                raise LogDamaged(path, f"entry {i} cannot be read: {exc}") from None
            term = t
        cache.append(entries)
        async with db.execute("SELECT term, vote, commit_index FROM raft_hard_state") as cur:
            row = await cur.fetchone()
        (commit_at,) = list(await db.execute_fetchall("SELECT coalesce(max(commit_at), 0) FROM raft_log"))[0]
        if row is not None:
            if (problem := _valid_hard_state(row[0], row[1], row[2], cache.last_index())) is not None:
                raise LogDamaged(path, problem)
            commit = max(int(row[2]), min(int(commit_at), cache.last_index()))
            cache.set_hard_state(HardState(int(row[0]), row[1], commit))
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

        A new term or vote is on disk before this returns. A hard state that only moves the
        commit index is not forced to disk: nothing depends on it being there (a restarted node
        learns it again from the leader; a lower one only means replaying less at start), so, as
        etcd does, it rides along with the next write of entries (in their ``commit_at``, the
        same statement) and is written at :meth:`close`.

        Args:
            hard_state: New hard state, or None if unchanged.
            entries: Entries to append, contiguous and ascending.
        """
        if not entries and hard_state is None:
            return
        held = self._cache.hard_state()
        must_write_state = hard_state is not None and (hard_state.term, hard_state.vote) != (held.term, held.vote)
        if hard_state is not None and not must_write_state:
            self._cache.set_hard_state(hard_state)   # only the commit index moved
            self._commit_dirty = True
            hard_state = None
        if not entries and hard_state is None:
            return
        commit = (hard_state or self._cache.hard_state()).commit
        first = entries[0].index if entries else 0
        if entries and not 1 <= first <= self._cache.last_index() + 1:
            raise ValueError(f"append at {first} leaves a gap after {self._cache.last_index()}")
        conflict = bool(entries) and first <= self._cache.last_index()   # a follower's suffix (§5.3)
        rows = [(e.index, e.term, e.type.value, e.data, e.proposal_id, commit) for e in entries]
        if hard_state is None and not conflict and len(rows) <= _ONE_STATEMENT_ENTRIES:
            await self._db.execute(_INSERT + ", ".join([_ROW] * len(rows)), [x for r in rows for x in r])
        elif rows:
            await self._db.execute("BEGIN")
            try:
                if conflict:
                    await self._db.execute("DELETE FROM raft_log WHERE idx >= ?", (first,))
                await self._db.executemany(_INSERT + _ROW, rows)
                if hard_state is not None:
                    await self._write_hard_state(hard_state)
                await self._db.execute("COMMIT")
            except BaseException:
                try:
                    await self._db.execute("ROLLBACK")
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    pass
                raise
        else:
            assert hard_state is not None   # no entries: the returns above leave a hard state
            await self._write_hard_state(hard_state)   # one statement: its own transaction
        self._cache.append(entries)
        if hard_state is not None:
            self._cache.set_hard_state(hard_state)
        if hard_state is not None or rows:
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
