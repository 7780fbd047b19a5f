"""The Storage interface the Raft core reads from, and an in-memory implementation.

Modelled on etcd-io/raft ``storage.go``: the core only *reads* storage (at start-up and when it
needs entries it no longer holds in memory); all writes are done by the driver when it handles a
:class:`~.node.Ready` (``append`` the Ready's entries, then ``set_hard_state``; ``apply_snapshot``
for a snapshot a leader sent). A restarted node is rebuilt from storage alone, which is exactly
what survives a crash.

Compaction (thesis §5.1 of chapter 5): once the state machine's effect up to some applied index
is saved in a snapshot (``create_snapshot``), the entries up to an index at or below it may go
(``compact``). The log then starts after the compacted index, whose term is still known (the
consistency check of the next append needs it), and a follower that lacks what was dropped is
sent the snapshot instead.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from .messages import EMPTY_HARD_STATE, Entry, HardState, SnapshotMeta


class Compacted(IndexError):
    """The entry asked for was dropped by compaction: its effect is in the snapshot."""


class Storage(Protocol):
    """What the core needs from stable storage. Indexes start at 1; index 0 has term 0."""

    def hard_state(self) -> HardState:
        """The last persisted hard state (term, vote, commit)."""
        ...

    def snapshot(self) -> SnapshotMeta | None:
        """The latest snapshot held, or None."""
        ...

    def first_index(self) -> int:
        """Index of the first entry held: 1 until compaction, then the compacted index + 1."""
        ...

    def last_index(self) -> int:
        """Index of the last entry held (the compacted index when none is held after it)."""
        ...

    def term(self, index: int) -> int:
        """Term of the entry at ``index``; 0 for index 0; the compacted entry's at ``first_index() - 1``.

        Raises:
            Compacted: ``index`` is below ``first_index() - 1``.
            IndexError: ``index`` is past ``last_index()``.
        """
        ...

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries with ``lo <= index < hi``.

        Raises:
            Compacted: ``lo`` is below ``first_index()``.
            IndexError: ``hi`` is past ``last_index() + 1``.
        """
        ...


class MemoryStorage:
    """A :class:`Storage` in memory, plus the writes a driver makes. For tests, simulations and
    as the cache of a persistent store.

    ``append`` follows etcd's contract: entries replace everything from their first index on, so a
    follower's truncated suffix disappears from storage when the replacement is persisted.
    """

    def __init__(self) -> None:
        self._hard = EMPTY_HARD_STATE
        # _log[0] stands for the compacted entry (index 0, term 0 before any compaction): its
        # index and term are known, its data is not.
        self._log: list[Entry] = [Entry(index=0, term=0)]
        self._snapshot: SnapshotMeta | None = None

    @property
    def _offset(self) -> int:
        return self._log[0].index

    def hard_state(self) -> HardState:
        return self._hard

    def snapshot(self) -> SnapshotMeta | None:
        return self._snapshot

    def first_index(self) -> int:
        return self._offset + 1

    def last_index(self) -> int:
        return self._offset + len(self._log) - 1

    def term(self, index: int) -> int:
        if index < self._offset:
            raise Compacted(f"entry {index} is compacted (the log starts after {self._offset})")
        if index > self.last_index():
            raise IndexError(f"index {index} past the last entry, {self.last_index()}")
        return self._log[index - self._offset].term

    def entries(self, lo: int, hi: int) -> list[Entry]:
        if lo <= self._offset:
            raise Compacted(f"entries from {lo}: the log starts after {self._offset}")
        if not lo <= hi <= self.last_index() + 1:
            raise IndexError(f"entries [{lo}, {hi}) outside [{self._offset + 1}, {self.last_index() + 1})")
        return self._log[lo - self._offset:hi - self._offset]

    # --- writes: the driver's side -------------------------------------------------------------

    def start_after(self, index: int, term: int, snapshot: SnapshotMeta | None) -> None:
        """Makes an empty storage one whose log was compacted up to ``(index, term)``, holding
        ``snapshot`` (at or after that index): how a persistent store loads a compacted log.

        Raises:
            ValueError: the storage is not empty, or the snapshot is before the compacted index.
        """
        if self.last_index() != 0 or self._snapshot is not None:
            raise ValueError("start_after needs an empty storage")
        if index and (snapshot is None or snapshot.index < index):
            raise ValueError(f"a log compacted to {index} needs a snapshot at or after it")
        self._log = [Entry(index=index, term=term)]
        self._snapshot = snapshot

    def set_hard_state(self, hard_state: HardState) -> None:
        """Persists the hard state."""
        self._hard = hard_state

    def append(self, entries: Sequence[Entry]) -> None:
        """Persists ``entries``, first dropping every held entry at or after ``entries[0].index``.

        Raises:
            ValueError: the entries would leave a gap in the log or replace a compacted one.
        """
        if not entries:
            return
        first = entries[0].index
        if not self._offset < first <= self.last_index() + 1:
            raise ValueError(f"append at {first} outside ({self._offset}, {self.last_index() + 1}]")
        del self._log[first - self._offset:]
        self._log.extend(entries)

    def create_snapshot(self, meta: SnapshotMeta) -> None:
        """Records that a snapshot up to ``meta.index`` (an entry held or compacted) exists.

        Raises:
            ValueError: ``meta`` is older than the snapshot held, past the log, or its term is
                not the entry's.
        """
        if self._snapshot is not None and meta.index <= self._snapshot.index:
            raise ValueError(f"snapshot at {meta.index} is not after the one held, at {self._snapshot.index}")
        if meta.index > self.last_index() or self.term(meta.index) != meta.term:
            raise ValueError(f"snapshot at ({meta.index}, term {meta.term}) is not an entry of the log")
        self._snapshot = meta

    def compact(self, index: int) -> None:
        """Drops the entries up to ``index``, which the snapshot held must cover.

        Raises:
            ValueError: ``index`` is past the snapshot (its entries are needed to rebuild the
                state after it) or past the log.
        """
        if index <= self._offset:
            return
        if self._snapshot is None or index > self._snapshot.index:
            raise ValueError(f"cannot compact to {index}: the snapshot held stops at "
                             f"{self._snapshot.index if self._snapshot else 0}")
        self._log = [Entry(index=index, term=self.term(index))] + self._log[index - self._offset + 1:]

    def apply_snapshot(self, meta: SnapshotMeta) -> None:
        """Replaces the whole log by a snapshot a leader sent: it holds no entry after it.

        Raises:
            ValueError: ``meta`` is not after the snapshot held.
        """
        if self._snapshot is not None and meta.index <= self._snapshot.index:
            raise ValueError(f"snapshot at {meta.index} is not after the one held, at {self._snapshot.index}")
        self._snapshot = meta
        self._log = [Entry(index=meta.index, term=meta.term)]
        if self._hard.commit < meta.index:
            self._hard = HardState(self._hard.term, self._hard.vote, meta.index)
