"""The Storage interface the Raft core reads from, and an in-memory implementation.

Modelled on etcd-io/raft ``storage.go``: the core only *reads* storage (at start-up and when it
needs entries it no longer holds in memory); all writes are done by the driver when it handles a
:class:`~.ready.Ready` (``append`` the Ready's entries, then ``set_hard_state``). A restarted node
is rebuilt from storage alone, which is exactly what survives a crash.

No snapshots or log compaction yet: ``first_index()`` is always 1 and the whole log is kept. A
persistent backend (SQLite) only has to provide the same six methods.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from .messages import EMPTY_HARD_STATE, Entry, HardState


class Storage(Protocol):
    """What the core needs from stable storage. Indexes start at 1; index 0 has term 0."""

    def hard_state(self) -> HardState:
        """The last persisted hard state (term, vote, commit)."""
        ...

    def first_index(self) -> int:
        """Index of the first entry held (always 1: no compaction yet)."""
        ...

    def last_index(self) -> int:
        """Index of the last entry held, 0 when the log is empty."""
        ...

    def term(self, index: int) -> int:
        """Term of the entry at ``index``; 0 for index 0.

        Raises:
            IndexError: ``index`` is outside ``[0, last_index()]``.
        """
        ...

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries with ``lo <= index < hi``.

        Raises:
            IndexError: the range is outside ``[first_index(), last_index() + 1)``.
        """
        ...


class MemoryStorage:
    """A :class:`Storage` in memory, plus the two writes a driver makes. For tests and simulations.

    ``append`` follows etcd's contract: entries replace everything from their first index on, so a
    follower's truncated suffix disappears from storage when the replacement is persisted.
    """

    def __init__(self) -> None:
        self._hard = EMPTY_HARD_STATE
        self._log: list[Entry] = [Entry(index=0, term=0)]  # a sentinel at index 0

    def hard_state(self) -> HardState:
        return self._hard

    def first_index(self) -> int:
        return 1

    def last_index(self) -> int:
        return len(self._log) - 1

    def term(self, index: int) -> int:
        if not 0 <= index < len(self._log):
            raise IndexError(f"index {index} outside [0, {len(self._log) - 1}]")
        return self._log[index].term

    def entries(self, lo: int, hi: int) -> list[Entry]:
        if not 1 <= lo <= hi <= len(self._log):
            raise IndexError(f"entries [{lo}, {hi}) outside [1, {len(self._log)})")
        return self._log[lo:hi]

    # --- writes: the driver's side -------------------------------------------------------------

    def set_hard_state(self, hard_state: HardState) -> None:
        """Persists the hard state."""
        self._hard = hard_state

    def append(self, entries: Sequence[Entry]) -> None:
        """Persists ``entries``, first dropping every held entry at or after ``entries[0].index``.

        Raises:
            ValueError: the entries would leave a gap in the log.
        """
        if not entries:
            return
        first = entries[0].index
        if not 1 <= first <= len(self._log):
            raise ValueError(f"append at {first} leaves a gap after {len(self._log) - 1}")
        del self._log[first:]
        self._log.extend(entries)
