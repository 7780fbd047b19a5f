"""The Raft log as the core sees it: stable entries in storage plus unstable ones in memory.

Entries the core has accepted but the driver has not yet persisted are *unstable*; they are
handed out in :attr:`~.ready.Ready.entries` and become stable when the Ready is advanced. The
unstable part may start below the storage's last index: a follower that truncated a conflicting
suffix (§5.3) holds the replacement here until the driver overwrites storage with it.

A snapshot a leader sent (:meth:`RaftLog.restore`) is unstable the same way until the driver
installs it: the log then stands for nothing before it, and reads of the older entries storage
still holds are answered as compacted.
"""

from __future__ import annotations

from .membership import Membership
from .messages import Entry, EntryType, SnapshotMeta
from .storage import Compacted, Storage


class LogDiverged(RuntimeError):
    """A leader's log contradicts an entry this node holds as committed.

    Raft rules it out (Leader Completeness, §5.4); it happens only when the cluster was
    forced into a new configuration (:func:`~.node.force_new_cluster`) from a node that had
    not received everything this one had, or when a data dir was copied or restored from an
    old backup. This node cannot follow that leader without undoing what it applied.
    """


class RaftLog:
    """Storage + unstable entries + commit/applied indexes + the CONFIG entries of the log.

    Args:
        storage: Where persisted entries are read from.
        initial: Membership in force when the log holds no CONFIG entry (an empty log on a node
            that waits to be added: no voters, so it never campaigns).
    """

    def __init__(self, storage: Storage, initial: Membership = Membership()) -> None:  # noqa: B008 (frozen, never mutated)
        self.storage = storage
        self._unstable: list[Entry] = []
        self._offset = storage.last_index() + 1  # index of self._unstable[0]
        snap = storage.snapshot()
        # The snapshot's entries were committed and applied when it was taken (a lazily written
        # commit index on disk may lag behind it).
        self.committed = max(storage.hard_state().commit, snap.index if snap else 0)
        self.applied = snap.index if snap else 0
        self._initial = Membership.decode(snap.config.encode()) if snap else initial
        #: A snapshot taken from a leader, not yet installed by the driver (see :meth:`restore`).
        self.pending_snapshot: SnapshotMeta | None = None
        # (index, membership) of every CONFIG entry after the snapshot, ascending, so a
        # truncation can revert the configuration in force to the previous one (thesis §4.1).
        # The snapshot's configuration stands for those before it.
        self._configs: list[tuple[int, Membership]] = []
        last = storage.last_index()
        lo = max(storage.first_index(), self.applied + 1)
        if last >= lo:
            for e in storage.entries(lo, last + 1):
                if e.type is EntryType.CONFIG:
                    self._configs.append((e.index, Membership.decode(e.data)))

    # --- reading --------------------------------------------------------------------------------

    def first_index(self) -> int:
        """Index of the first entry held: those before it are in the snapshot."""
        if self.pending_snapshot is not None:
            return self.pending_snapshot.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        """Index of the last entry, stable or not."""
        if self._unstable:
            return self._offset + len(self._unstable) - 1
        if self.pending_snapshot is not None:
            return self.pending_snapshot.index
        return self.storage.last_index()

    def snapshot(self) -> SnapshotMeta | None:
        """The latest snapshot: the one to install, else the one storage holds."""
        return self.pending_snapshot or self.storage.snapshot()

    def term(self, index: int) -> int | None:
        """Term at ``index`` (0 at index 0), or None past the end of the log or before its
        start (compacted: see :meth:`first_index`; the entry just before it is known)."""
        if index >= self._offset:
            pos = index - self._offset
            return self._unstable[pos].term if pos < len(self._unstable) else None
        snap = self.pending_snapshot
        if snap is not None:
            return snap.term if index == snap.index else None
        if index > self.storage.last_index():
            return None
        try:
            return self.storage.term(index)
        except Compacted:
            return None

    def last_term(self) -> int:
        """Term of the last entry (0 for an empty log)."""
        term = self.term(self.last_index())
        assert term is not None
        return term

    def match_term(self, index: int, term: int) -> bool:
        """Whether the log holds an entry at ``index`` with ``term`` (the §5.3 consistency check)."""
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Whether a log ending at ``(last_index, last_term)`` is at least as up-to-date as ours.

        §5.4.1: the later last term wins; with equal last terms the longer log wins.
        """
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries with ``lo <= index < hi`` (``first_index() <= lo``, ``hi <= last_index() + 1``)."""
        if lo >= hi:
            return []
        out: list[Entry] = []
        if lo < self._offset:
            out.extend(self.storage.entries(lo, min(hi, self._offset)))
        if hi > self._offset:
            start = max(lo, self._offset) - self._offset
            out.extend(self._unstable[start:hi - self._offset])
        return out

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The last ``(i, term(i))`` with ``i <= index`` and ``term(i) <= term``.

        Used on both sides of a rejected append (fast backtracking): every entry after ``i`` up to
        ``index`` has a larger term than ``term``, so it cannot match the other log there, because
        terms never decrease along a log. Where the search reaches the compacted prefix it
        stops there with term 0 (as etcd's ``findConflictByTerm``): a leader probing below its
        own first entry sends its snapshot instead.
        """
        i = min(index, self.last_index())
        while i > 0:
            t = self.term(i)
            if t is None:
                return i, 0
            if t <= term:
                return i, t
            i -= 1
        return 0, 0

    def membership(self) -> Membership:
        """The configuration in force: the latest CONFIG entry in the log, committed or not
        (the snapshot's when none follows it)."""
        return self._configs[-1][1] if self._configs else self._initial

    def last_config_index(self) -> int:
        """Index of the latest CONFIG entry after the snapshot (0 if none)."""
        return self._configs[-1][0] if self._configs else 0

    # --- writing --------------------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        """Appends ``entries``, dropping any entries at or after ``entries[0].index`` first.

        The caller guarantees the first entry directly follows an entry it matched (§5.3) and that
        nothing committed is dropped.
        """
        if not entries:
            return
        first = entries[0].index
        if first <= self.committed:
            raise LogDiverged(
                f"the leader's entry {first} (term {entries[0].term}) replaces one this node "
                f"committed (term {self.term(first)}; committed up to {self.committed})")
        assert first <= self.last_index() + 1, f"append at {first} leaves a gap"
        if first >= self._offset:
            del self._unstable[first - self._offset:]
            self._unstable.extend(entries)
        else:  # the replacement starts inside storage: it overwrites storage when persisted
            self._unstable = list(entries)
            self._offset = first
        while self._configs and self._configs[-1][0] >= first:
            self._configs.pop()
        for e in entries:
            if e.type is EntryType.CONFIG:
                self._configs.append((e.index, Membership.decode(e.data)))

    def maybe_append(self, prev_index: int, prev_term: int, entries: tuple[Entry, ...]) -> int | None:
        """Follower side of AppendEntries (§5.3, Figure 2 receiver rules 2-4).

        Returns:
            The index of the last entry the leader's message vouches for (``prev_index +
            len(entries)``), or None when the log does not contain ``(prev_index, prev_term)``.
        """
        if not self.match_term(prev_index, prev_term):
            return None
        # Rule 3: delete an existing entry that conflicts with a new one and all that follow it.
        # Entries already present with the same term are identical (Log Matching) and kept: a
        # stale or duplicated MsgApp must never truncate entries appended after it.
        for pos, e in enumerate(entries):
            if self.term(e.index) != e.term:
                self.append(list(entries[pos:]))
                break
        return prev_index + len(entries)

    def commit_to(self, index: int) -> bool:
        """Raises the commit index to ``index`` if higher. Returns whether it moved."""
        if index > self.committed:
            assert index <= self.last_index(), f"commit {index} past last {self.last_index()}"
            self.committed = index
            return True
        return False

    def restore(self, snap: SnapshotMeta) -> None:
        """Follower: replaces the whole log by a leader's snapshot (thesis §5.3 receiver rules
        6-7: this log does not hold the snapshot's last entry, so nothing after it can be kept).
        The snapshot stands for committed entries, so the commit index moves to it; it stays
        unstable until the driver installs it (:meth:`snapshot_installed`).
        """
        assert snap.index > self.committed, "a snapshot never moves the commit index back"
        self.pending_snapshot = snap
        self._unstable = []
        self._offset = snap.index + 1
        self.committed = snap.index
        self._initial = Membership.decode(snap.config.encode())
        self._configs = []

    def snapshot_installed(self, snap: SnapshotMeta) -> None:
        """The driver installed ``snap`` in storage and restored its state machine from it."""
        if self.pending_snapshot == snap:
            self.pending_snapshot = None
        self.applied = max(self.applied, snap.index)

    def membership_at(self, index: int) -> Membership:
        """The configuration in force at ``index`` (``index >= first_index() - 1``): what a
        snapshot taken there must carry."""
        config = self._initial
        for at, m in self._configs:
            if at > index:
                break
            config = m
        return config

    # --- the Ready cycle --------------------------------------------------------------------------

    def unstable_entries(self) -> list[Entry]:
        """Entries not yet persisted."""
        return list(self._unstable)

    def stable_to(self, index: int, term: int) -> None:
        """Marks entries up to ``(index, term)`` persisted, unless they were replaced meanwhile."""
        if index < self._offset or self.term(index) != term:
            return
        del self._unstable[:index + 1 - self._offset]
        self._offset = index + 1

    def stable_last_index(self) -> int:
        """Last index known to be persisted (entries before the unstable part)."""
        return self._offset - 1
