"""The node's two Optuna storages over its replicated journal, built again when a snapshot
replaces the journal.

A ``JournalStorage`` replays what is appended after what it read, so it cannot follow a
journal that a restored snapshot replaced: its backend refuses from then on (``JournalReplaced``,
study/journal.py). Every user of the node's storages therefore asks this holder for them at
each use, never keeps one, and gets storages built on the current journal. Study and trial ids
survive a restore (a snapshot's journal keeps them, study/compaction.py), so an id read from an
old storage names the same study or trial in a new one.

A storage is built on first use after a restore, on the caller's thread, and replays the whole
(compacted) journal then, as a node's storages do on their first use after a start.
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

from optuna.storages import JournalStorage

from nexus_node.study.batches import BatchedJournalStorage
from nexus_node.study.journal import DEFAULT_NAME, ReplicatedJournal, ReplicatedJournalBackend

S = TypeVar("S", bound=JournalStorage)


class _Current(Generic[S]):
    """One storage over the journal, replaced when its backend goes stale."""

    def __init__(self, build: Callable[[ReplicatedJournalBackend], S],
                 backend: Callable[[], ReplicatedJournalBackend]) -> None:
        self._build, self._backend = build, backend
        self._lock = threading.Lock()
        self._built: tuple[ReplicatedJournalBackend, S] | None = None

    def get(self) -> S:
        with self._lock:
            if self._built is None or self._built[0].stale:
                backend = self._backend()
                self._built = backend, self._build(backend)
            return self._built[1]


class StudyStorages:
    """This node's storages over journal ``name`` (see the module docstring).

    Args:
        journal: The node's replicated journal.
        name: Which journal of the log.
    """

    def __init__(self, journal: ReplicatedJournal, name: str = DEFAULT_NAME) -> None:
        self._writes = _Current(BatchedJournalStorage, lambda: journal.backend(name))
        self._reads = _Current(JournalStorage, lambda: journal.backend(name))

    @property
    def writes(self) -> BatchedJournalStorage:
        """The node's one writing storage (the job manager's, and the StorageService's writes)."""
        return self._writes.get()

    @property
    def reads(self) -> JournalStorage:
        """A storage that no write uses (the StorageService's reads on the event loop)."""
        return self._reads.get()
