"""The Raft log and hard state on disk (SQLite through aiosqlite), with the cache the core reads.

The core reads :class:`~nexus_node.consensus.raft.Storage` synchronously and often (terms for the
consistency check, entries for MsgApp), so :class:`RaftLogStore` keeps the persisted log's index
and terms in memory and the data of its last :data:`MEMORY_ENTRIES` entries (a
:class:`~nexus_node.consensus.raft.MemoryStorage` whose older entries are thin, :class:`_Tail`),
and serves reads from it; an older entry's data (a follower far behind, the entries a restarted
node applies) is read back from the file. Memory then does not grow with the log's tail. Writes happen
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

Compaction (Raft thesis ch. 5): the state machine's snapshots are files in :attr:`snapshot_dir
<RaftLogStore.snapshot_dir>` (:mod:`~nexus_node.consensus.snapshot_file`), and the table
``raft_snapshot`` records the current one (index, term, configuration, file name, size,
SHA-256) and how far the log was compacted (the index and term of the entry before the first
held; no row: never). :meth:`RaftLogStore.create_snapshot` (a node's own snapshot) and
:meth:`RaftLogStore.install_snapshot` (a leader's) each change the record and drop entries in
one transaction, and remove the older files only after it commits, so a crash at any point
leaves the old state or the new one, both whole: a file written but never recorded is
removed at the next open, with any temporary or partial file. The file must be written (and,
from a leader, verified) before either call: the record never names a file that is not
complete on disk. A start-up checks the recorded file's size, not its checksum (reading a
large snapshot at every start is what compaction is meant to avoid); the driver restores from
:func:`~nexus_node.consensus.snapshot_file.read_snapshot`, which checks it as it goes.

A damaged file is refused, never half-read: :func:`inspect` runs SQLite's ``quick_check`` and
checks the shape of what is held (indexes from 1, or from the compacted index + 1, with no gap,
terms and the hard state in range, the commit index within the log, the snapshot file there), and :meth:`RaftLogStore.open` raises :class:`LogDamaged` for
anything SQLite or those checks reject. A node that started on a half-read log could vote or
acknowledge again in a term it already acted in (Raft §5.2), so it must not start at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import re
import sqlite3
import threading
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence

import aiosqlite

from nexus_node.consensus.raft import Entry, EntryType, HardState, MemoryStorage, SnapshotMeta
from nexus_node.consensus.raft.messages import EMPTY_HARD_STATE
from nexus_node.consensus.snapshot_file import (
    SnapshotFile,
    fsync_dir,
    remove_all_but,
    remove_snapshots_before,
    snapshot_name,
)

log = logging.getLogger(__name__)

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
CREATE TABLE IF NOT EXISTS raft_snapshot (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    snap_index INTEGER NOT NULL,
    snap_term INTEGER NOT NULL,
    config TEXT NOT NULL,
    file TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    compacted_index INTEGER NOT NULL,
    compacted_term INTEGER NOT NULL
);
"""
_SNAPSHOT_COLUMNS = "snap_index, snap_term, config, file, size, sha256, compacted_index, compacted_term"
_SAVE_SNAPSHOT = f"INSERT OR REPLACE INTO raft_snapshot (id, {_SNAPSHOT_COLUMNS}) VALUES (0, ?, ?, ?, ?, ?, ?, ?, ?)"

#: The folder beside the log file that holds its snapshot files.
SNAPSHOT_DIR = "snapshots"

#: At most this many entries go in one multi-row INSERT (6 parameters each, well under SQLite's
#: limit of 32766 variables); a longer save uses a transaction instead.
_ONE_STATEMENT_ENTRIES = 1000
_INSERT = "INSERT INTO raft_log (idx, term, type, data, proposal_id, commit_at) VALUES "
_ROW = "(?, ?, ?, ?, ?, ?)"

#: Entries whose data stays in memory (the newest): what a leader sends followers that keep up,
#: and what a node applies next.
MEMORY_ENTRIES = 1024

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


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class _Compaction:
    """A log's ``raft_snapshot`` row: its snapshot, and the entry its log was compacted to
    (the entries held start after ``index``)."""

    file: SnapshotFile
    index: int
    term: int


def _read_compaction(path: Path, rows: Sequence[Any]) -> _Compaction | None:
    """The checked snapshot record of the log at ``path`` (its ``raft_snapshot`` rows), or None.

    Raises:
        LogDamaged: the record is not one this store could have written.
    """
    if not rows:
        return None
    if len(rows) > 1:
        raise LogDamaged(path, f"it records {len(rows)} snapshots, not one")
    index, term, config, name, size, sha256, c_index, c_term = rows[0]
    for what, value in (("index", index), ("term", term), ("size", size),
                        ("compacted index", c_index), ("compacted term", c_term)):
        if not isinstance(value, int) or not 0 <= value < LIMIT:
            raise LogDamaged(path, f"its snapshot's {what} is {value!r:.40}, not an integer in [0, 2**62)")
    if not (isinstance(config, str) and isinstance(sha256, str) and _SHA256.match(sha256)
            and name == snapshot_name(index, term)):
        raise LogDamaged(path, f"its snapshot record (file {name!r:.80}) is malformed")
    if c_index > index or c_term > term:
        raise LogDamaged(path, f"it was compacted to entry {c_index} (term {c_term}), past its snapshot "
                               f"at entry {index} (term {term})")
    file = SnapshotFile(path.parent / SNAPSHOT_DIR / name, SnapshotMeta(index, term, config), size, sha256)
    return _Compaction(file, c_index, c_term)


def _check_snapshot_file(path: Path, compaction: _Compaction | None) -> None:
    """Checks that the snapshot file the log at ``path`` records is there with its recorded size
    (not its checksum: see the module docstring). Blocking.

    Raises:
        LogDamaged: it is not, naming the file.
    """
    if compaction is None:
        return
    file = compaction.file
    try:
        size = file.path.stat().st_size
    except FileNotFoundError:
        raise LogDamaged(path, f"the snapshot file it records, {file.path}, is missing (it holds the state "
                               f"up to entry {file.meta.index}; the log before entry "
                               f"{compaction.index + 1} was dropped)") from None
    if size != file.size:
        raise LogDamaged(path, f"the snapshot file it records, {file.path}, is {size} bytes, not the "
                               f"{file.size} recorded")


def _open_snapshot_dir(path: Path, compaction: _Compaction | None) -> Path:
    """Creates the snapshot folder of the log at ``path``, checks the recorded file (see
    :func:`_check_snapshot_file`), then removes every other file in it: what a crash left (a
    temporary file, a file never recorded) or an unfinished transfer. Blocking.

    Returns:
        The folder.
    """
    directory = path.parent / SNAPSHOT_DIR
    directory.mkdir(exist_ok=True)
    _check_snapshot_file(path, compaction)   # before removing anything
    for removed in remove_all_but(directory, compaction.file.path.name if compaction else None):
        log.info("removed %s: no log record names it (left by a crash or an unfinished transfer)", removed)
    return directory


def _settle(file: SnapshotFile) -> None:
    """Checks that ``file`` is on disk with its size and makes its name durable, before a record
    names it (a power cut must not take back a rename the record relies on). Blocking.

    Raises:
        ValueError: the file is missing or of another size.
    """
    try:
        size = file.path.stat().st_size
    except FileNotFoundError:
        raise ValueError(f"snapshot file {file.path} does not exist") from None
    if size != file.size:
        raise ValueError(f"snapshot file {file.path} is {size} bytes, not {file.size}")
    fsync_dir(file.path.parent)


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
        compaction = None
        if "raft_snapshot" in tables:   # a log written before compaction existed has none
            compaction = _read_compaction(path, db.execute(f"SELECT {_SNAPSHOT_COLUMNS} FROM raft_snapshot").fetchall())
        after = compaction.index if compaction else 0
        count, low, high, bad_terms = db.execute(
            "SELECT count(*), coalesce(min(idx), 0), coalesce(max(idx), 0), "
            "count(*) FILTER (WHERE typeof(term) != 'integer' OR term < 0 OR term >= ?) FROM raft_log",
            (LIMIT,)).fetchone()
        if count and (low != after + 1 or high != after + count):
            raise LogDamaged(path, f"its entries are not indexes {after + 1} to {after + count} "
                                   f"(they run from {low} to {high})")
        last_index = high if count else after
        if compaction and compaction.file.meta.index > last_index:
            raise LogDamaged(path, f"its snapshot at entry {compaction.file.meta.index} is past its last "
                                   f"entry, {last_index}")
        _check_snapshot_file(path, compaction)
        if bad_terms:
            raise LogDamaged(path, f"{bad_terms} entries have a term that is not an integer in [0, 2**62)")
        rows = db.execute("SELECT term, vote, commit_index FROM raft_hard_state").fetchall()
        if len(rows) > 1:
            raise LogDamaged(path, f"it holds {len(rows)} hard states, not one")
        if rows:
            term, vote, commit = rows[0]
            if (problem := _valid_hard_state(term, vote, commit, last_index)) is not None:
                raise LogDamaged(path, problem)
        return LogFile.HELD if count or rows or compaction else LogFile.EMPTY
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


class _EntryReader:
    """Reads persisted entries back from the log file, on a connection of its own (WAL lets it
    read beside the writer). Entries reach the cache only once committed to the file, so every
    entry the cache holds can be read back."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def read(self, lo: int, hi: int) -> list[Entry]:
        if lo >= hi:
            return []
        with self._lock:
            if self._db is None:
                self._db = sqlite3.connect(f"{self._path.resolve().as_uri()}?mode=ro", uri=True,
                                           check_same_thread=False)
                self._db.execute("PRAGMA cache_size=-256")   # KiB: reads of old entries are rare
            rows = self._db.execute("SELECT idx, term, type, data, proposal_id FROM raft_log "
                                    "WHERE idx >= ? AND idx < ? ORDER BY idx", (lo, hi)).fetchall()
        try:
            return [Entry(i, t, EntryType(ty), bytes(d), p) for i, t, ty, d, p in rows]
        except (TypeError, ValueError) as exc:
            raise LogDamaged(self._path, f"an entry from {lo} cannot be read: {exc}") from None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class _Tail(MemoryStorage):
    """A MemoryStorage in which the entries before the newest ``keep`` are thin (index, term and
    type: what the core's checks read), their data read back by ``read(lo, hi)`` when asked."""

    def __init__(self, read: Callable[[int, int], list[Entry]], keep: int | None = None) -> None:
        super().__init__()
        self._read, self._keep = read, keep if keep is not None else MEMORY_ENTRIES
        self._full_from = 1   # the entries from here on hold their data

    def append(self, entries: Sequence[Entry]) -> None:
        super().append(entries)
        if entries:
            self._full_from = min(self._full_from, entries[0].index)
        self._thin()

    def append_thin(self, entries: Sequence[Entry]) -> None:
        """Loads entries whose data is on disk only (a start-up)."""
        super().append(entries)
        self._full_from = self.last_index() + 1

    def _thin(self) -> None:
        offset = self._offset
        self._full_from = max(self._full_from, offset + 1)
        cut = self.last_index() + 1 - self._keep
        for index in range(self._full_from, cut):
            e = self._log[index - offset]
            self._log[index - offset] = Entry(e.index, e.term, e.type)
        self._full_from = max(self._full_from, cut)

    def compact(self, index: int) -> None:
        super().compact(index)
        self._full_from = max(self._full_from, self._offset + 1)

    def apply_snapshot(self, meta: SnapshotMeta) -> None:
        super().apply_snapshot(meta)
        self._full_from = self._offset + 1

    def entries(self, lo: int, hi: int) -> list[Entry]:
        held = super().entries(lo, hi)
        if lo >= self._full_from or lo >= hi:
            return held
        on_disk = self._read(lo, min(hi, self._full_from))
        if [(e.index, e.term) for e in on_disk] != [(e.index, e.term) for e in held[:len(on_disk)]] or \
                len(on_disk) != min(hi, self._full_from) - lo:
            raise RuntimeError(f"the log file does not hold entries {lo} to {min(hi, self._full_from) - 1} "
                               "as this node persisted them")
        return on_disk + held[len(on_disk):]


class RaftLogStore:
    """A :class:`~nexus_node.consensus.raft.Storage` persisted in SQLite.

    Reads (the Storage methods, :meth:`snapshot_file`) are synchronous and served from memory;
    the writes are the async :meth:`save`, :meth:`create_snapshot` and :meth:`install_snapshot`.
    One driver task owns an instance: it is not safe to call them concurrently.

    Snapshot files are removed once a newer one is recorded. A transfer that already opened
    the older file still reads all of it (an open file keeps its data after it is unlinked);
    one that had not yet opened it fails and is retried with the newer one.

    Use :meth:`open` to build one.
    """

    def __init__(self, db: aiosqlite.Connection, cache: MemoryStorage, snapshot_dir: Path,
                 snapshot_file: SnapshotFile | None = None) -> None:
        self._db = db
        self._cache = cache
        self._snapshot_dir = snapshot_dir
        self._snapshot_file = snapshot_file
        self._commit_dirty = False   # the cached commit index is ahead of the disk's
        self._closed = False
        self._reader: _EntryReader | None = None

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        """Runs the statements of the block as one transaction: all of them or none."""
        await self._db.execute("BEGIN")
        try:
            yield
            await self._db.execute("COMMIT")
        except BaseException:
            try:
                await self._db.execute("ROLLBACK")
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
            raise

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
            LogDamaged: the file is damaged (SQLite says so, or what it holds is not a log), or
                the snapshot file it records is missing or not of its recorded size.
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
        compaction = _read_compaction(path, list(await db.execute_fetchall(
            f"SELECT {_SNAPSHOT_COLUMNS} FROM raft_snapshot")))
        after, term = (compaction.index, compaction.term) if compaction else (0, 0)
        # Index, term and type of every entry (what the checks and the core read); the data of
        # the newest only (the others' is read when asked, _Tail).
        async with db.execute("SELECT idx, term, type FROM raft_log ORDER BY idx") as cur:
            rows = [row async for row in cur]
        entries = []
        for expected, (i, t, ty) in enumerate(rows, start=after + 1):
            if i != expected:
                raise LogDamaged(path, f"the log has a gap before index {i}" if i > expected else
                                 f"it holds entry {i}, which was compacted (the log starts after {after})")
            # Terms never go down along a log (Raft §5.3: the Log Matching Property).
            if not isinstance(t, int) or not term <= t < LIMIT:
                raise LogDamaged(path, f"entry {i} has term {t!r} (after term {term})")
            try:
                entries.append(Entry(i, t, EntryType(ty)))
            except (TypeError, ValueError) as exc:
                raise LogDamaged(path, f"entry {i} cannot be read: {exc}") from None
            term = t
        reader = _EntryReader(path)
        try:
            cache = _Tail(reader.read)
            if compaction is not None:
                cache.start_after(compaction.index, compaction.term, compaction.file.meta)
            full_from = max(after + 1, after + len(entries) + 1 - MEMORY_ENTRIES)
            recent = await asyncio.to_thread(reader.read, full_from, after + len(entries) + 1)
            cache.append_thin(entries[:full_from - after - 1])
            cache.append(recent)
            if compaction is not None:
                meta = compaction.file.meta
                if meta.index > cache.last_index() or cache.term(meta.index) != meta.term:
                    raise LogDamaged(path, f"its snapshot (entry {meta.index}, term {meta.term}) is not an entry of "
                                           f"its log, which ends at {cache.last_index()}")
            async with db.execute("SELECT term, vote, commit_index FROM raft_hard_state") as cur:
                row = await cur.fetchone()
            (commit_at,) = list(await db.execute_fetchall("SELECT coalesce(max(commit_at), 0) FROM raft_log"))[0]
            if row is not None:
                if (problem := _valid_hard_state(row[0], row[1], row[2], cache.last_index())) is not None:
                    raise LogDamaged(path, problem)
                commit = max(int(row[2]), min(int(commit_at), cache.last_index()))
                cache.set_hard_state(HardState(int(row[0]), row[1], commit))
            if compaction is not None and cache.hard_state().commit < compaction.file.meta.index:
                # A snapshot holds only committed entries (its writes record the commit index too).
                held = cache.hard_state()
                cache.set_hard_state(HardState(held.term, held.vote, compaction.file.meta.index))
            snapshot_dir = await asyncio.to_thread(_open_snapshot_dir, path, compaction)   # the last check
            store = cls(db, cache, snapshot_dir, compaction.file if compaction else None)
        except BaseException:
            reader.close()
            raise
        store._reader = reader
        return store

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
            if self._reader is not None:
                self._reader.close()
            await self._db.close()

    def is_empty(self) -> bool:
        """Whether nothing was ever persisted (a brand-new node)."""
        return (self._cache.last_index() == 0 and self._cache.hard_state() == EMPTY_HARD_STATE
                and self._cache.snapshot() is None)

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
        if entries and first > self._cache.last_index() + 1:
            raise ValueError(f"append at {first} leaves a gap after {self._cache.last_index()}")
        if entries and first < self._cache.first_index():
            raise ValueError(f"append at {first} replaces compacted entries (the log starts at "
                             f"{self._cache.first_index()})")
        conflict = bool(entries) and first <= self._cache.last_index()   # a follower's suffix (§5.3)
        rows = [(e.index, e.term, e.type.value, e.data, e.proposal_id, commit) for e in entries]
        if hard_state is None and not conflict and len(rows) <= _ONE_STATEMENT_ENTRIES:
            await self._db.execute(_INSERT + ", ".join([_ROW] * len(rows)), [x for r in rows for x in r])
        elif rows:
            async with self._transaction():
                if conflict:
                    await self._db.execute("DELETE FROM raft_log WHERE idx >= ?", (first,))
                await self._db.executemany(_INSERT + _ROW, rows)
                if hard_state is not None:
                    await self._write_hard_state(hard_state)
        else:
            assert hard_state is not None   # no entries: the returns above leave a hard state
            await self._write_hard_state(hard_state)   # one statement: its own transaction
        self._cache.append(entries)
        if hard_state is not None:
            self._cache.set_hard_state(hard_state)
        if hard_state is not None or rows:
            self._commit_dirty = False

    # --- snapshots ---------------------------------------------------------------------------------

    @property
    def snapshot_dir(self) -> Path:
        """The folder of the snapshot files (``snapshots/`` beside the log file)."""
        return self._snapshot_dir

    def snapshot_file(self) -> SnapshotFile | None:
        """The current snapshot's file, or None."""
        return self._snapshot_file

    async def _check_new_snapshot(self, file: SnapshotFile) -> None:
        meta, held = file.meta, self._cache.snapshot()
        if file.path != self._snapshot_dir / snapshot_name(meta.index, meta.term):
            raise ValueError(f"snapshot file {file.path} is not {snapshot_name(meta.index, meta.term)} in "
                             f"{self._snapshot_dir}")
        if held is not None and meta.index <= held.index:
            raise ValueError(f"snapshot at {meta.index} is not after the one held, at {held.index}")
        await asyncio.to_thread(_settle, file)

    async def create_snapshot(self, file: SnapshotFile, compact_to: int) -> None:
        """Records this node's own snapshot and drops the entries up to ``compact_to``.

        In one transaction: the snapshot becomes the current one, the entries up to
        ``compact_to`` go (raised to the entry already compacted to, if below it), and the
        commit index is written if it was pending. Then the cache follows and the older
        snapshot files are removed. A crash before the commit leaves the old state (``file``
        is then removed at the next open); after it, the new one.

        Args:
            file: Written by :func:`~nexus_node.consensus.snapshot_file.write_snapshot` into
                :attr:`snapshot_dir`, of the state at an applied (so committed) entry of the log.
            compact_to: The last entry to drop, at most ``file.meta.index``; the entries after
                it stay for followers a little behind.

        Raises:
            ValueError: the snapshot is not after the current one, not of a committed entry of
                the log (index and term), not in :attr:`snapshot_dir` with its size, or
                ``compact_to`` is past it. Nothing changed.
        """
        meta = file.meta
        await self._check_new_snapshot(file)
        compacted = self._cache.first_index() - 1
        if not compacted <= meta.index <= self._cache.hard_state().commit or self._cache.term(meta.index) != meta.term:
            raise ValueError(f"snapshot at ({meta.index}, term {meta.term}) is not a committed entry of the log "
                             f"(it holds {compacted + 1} to {self._cache.last_index()}, committed to "
                             f"{self._cache.hard_state().commit})")
        if compact_to > meta.index:
            raise ValueError(f"cannot compact to {compact_to}: the snapshot stops at {meta.index}")
        compact_to = max(compact_to, compacted)
        compact_term = self._cache.term(compact_to)
        async with self._transaction():
            await self._db.execute(_SAVE_SNAPSHOT, (meta.index, meta.term, meta.config, file.path.name, file.size,
                                                    file.sha256, compact_to, compact_term))
            await self._db.execute("DELETE FROM raft_log WHERE idx <= ?", (compact_to,))
            if self._commit_dirty:
                await self._write_hard_state(self._cache.hard_state())
        self._commit_dirty = False
        self._cache.create_snapshot(meta)
        self._cache.compact(compact_to)
        self._snapshot_file = file
        await self._remove_older_snapshots(meta.index)

    async def install_snapshot(self, file: SnapshotFile) -> None:
        """Replaces the whole log by a leader's snapshot (Raft thesis §5.3 of chapter 5).

        In one transaction: every entry goes, the snapshot becomes the current one with the
        log compacted to it, and the commit index is raised to it. Then the cache follows
        and the older snapshot files are removed. A crash before the commit leaves the old
        state (``file`` is then removed at the next open); after it, the new one.

        Args:
            file: Received into :attr:`snapshot_dir` under its final name and verified
                (:func:`~nexus_node.consensus.snapshot_file.verify_snapshot`).

        Raises:
            ValueError: the snapshot is not after the current one, or not in
                :attr:`snapshot_dir` with its size. Nothing changed.
        """
        meta = file.meta
        await self._check_new_snapshot(file)
        held = self._cache.hard_state()
        hard = HardState(held.term, held.vote, max(held.commit, meta.index))
        async with self._transaction():
            await self._db.execute("DELETE FROM raft_log")
            await self._db.execute(_SAVE_SNAPSHOT, (meta.index, meta.term, meta.config, file.path.name, file.size,
                                                    file.sha256, meta.index, meta.term))
            await self._write_hard_state(hard)
        self._commit_dirty = False
        self._cache.apply_snapshot(meta)
        self._snapshot_file = file
        await self._remove_older_snapshots(meta.index)

    async def _remove_older_snapshots(self, index: int) -> None:
        # After the commit only: until then the older file is the one on record. A crash
        # before this leaves files the next open removes.
        await asyncio.to_thread(remove_snapshots_before, self._snapshot_dir, index)

    # --- Storage (reads, from memory) -------------------------------------------------------------

    def hard_state(self) -> HardState:
        """The last persisted hard state."""
        return self._cache.hard_state()

    def snapshot(self) -> SnapshotMeta | None:
        """The current snapshot, or None."""
        return self._cache.snapshot()

    def first_index(self) -> int:
        """Index of the first entry held: 1, or the index the log was compacted to + 1."""
        return self._cache.first_index()

    def last_index(self) -> int:
        """Index of the last persisted entry, 0 if none."""
        return self._cache.last_index()

    def term(self, index: int) -> int:
        """Term of the persisted entry at ``index`` (0 at index 0; the compacted entry's at
        ``first_index() - 1``)."""
        return self._cache.term(index)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Persisted entries with ``lo <= index < hi``."""
        return self._cache.entries(lo, hi)
