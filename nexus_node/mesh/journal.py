"""Optuna's journal on the replicated log: one ``JournalStorage`` per node, one shared history.

Optuna's :class:`~optuna.storages.JournalStorage` keeps its state by replaying an append-only list
of operation logs, and is built for many writers sharing that list (one JournalStorage per
process, as with its Redis backend). Here the list is part of the replicated state machine:

* :class:`ReplicatedJournal` is the state machine's handler for journal commands: it appends a
  committed batch of logs to a named journal, on every node, in log order.
* :class:`ReplicatedJournalBackend` is the ``BaseJournalBackend`` one node's JournalStorage uses.
  ``read_logs`` reads this node's applied journal (local: never a network call);
  ``append_logs`` commits the batch through consensus and returns once this node has applied it,
  so a JournalStorage always reads its own writes. Each call carries a fresh proposal id, so a
  batch retried across a failover is applied once.

Threads: Optuna's storage is synchronous (the node's ``StorageService`` runs writes on a thread
pool, see storage_service.py), while the driver lives on the event loop. ``append_logs`` hands the
proposal to the loop and blocks its own thread; calling it *on* the loop thread would deadlock
the loop that must apply the entry, so it refuses. Applied logs are guarded by a lock because
readers are on other threads.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
import weakref
from typing import Any, Iterable

from optuna.storages.journal import BaseJournalBackend

from nexus_node.mesh.driver import MeshStopped, RaftDriver
from nexus_node.mesh.state import encode_command

#: The state machine's command kind for journal appends.
KIND = "optuna_journal"
#: The journal every job's study lives in, unless a caller picks another name.
DEFAULT_NAME = "optuna"

# node id -> the live journal of that node in this process; lets a pickled backend find its
# node again (Optuna pickles storages, e.g. in its own test suite). Weak: a stopped node's
# journal goes away with it.
_LIVE: "weakref.WeakValueDictionary[str, ReplicatedJournal]" = weakref.WeakValueDictionary()


class ReplicatedJournal:
    """The applied Optuna journals of one node (several named journals can share a log).

    Registers itself with ``driver.state`` for :data:`KIND` commands; create it before
    :meth:`RaftDriver.start` so that the log replayed at start-up reaches it.

    Args:
        driver: The node's driver.
    """

    def __init__(self, driver: RaftDriver) -> None:
        self.driver = driver
        self._lock = threading.Lock()
        # Each log is kept as its JSON text and parsed on every read, as Optuna's file backend
        # does: JournalStorage keeps parts of the dicts it reads, so readers must never share.
        self._journals: dict[str, list[str]] = {}
        driver.state.register(KIND, self._apply)
        _LIVE[driver.node_id] = self

    def _apply(self, body: Any, index: int) -> int:
        body = body if isinstance(body, dict) else {}
        name, logs = body.get("name"), body.get("logs")
        if not isinstance(name, str) or not isinstance(logs, list) or \
                not all(isinstance(x, dict) for x in logs):
            # Same skip on every node: the command is committed, refusing it cannot undo that.
            return 0
        encoded = [json.dumps(x, separators=(",", ":")) for x in logs]
        with self._lock:
            self._journals.setdefault(name, []).extend(encoded)
            return len(self._journals[name])

    def read(self, name: str, log_number_from: int) -> list[dict[str, Any]]:
        """Applied logs of journal ``name`` from ``log_number_from`` on (fresh dicts)."""
        with self._lock:
            raw = self._journals.get(name, [])[log_number_from:]
        return [json.loads(x) for x in raw]

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._journals.values())

    def backend(self, name: str = DEFAULT_NAME, timeout: float | None = None) -> "ReplicatedJournalBackend":
        """A journal backend over journal ``name`` of this node."""
        return ReplicatedJournalBackend(self, name, timeout)

    async def append(self, name: str, logs: list[dict[str, Any]], timeout: float | None = None) -> int:
        """Commits ``logs`` to journal ``name`` and waits until this node has applied them.

        Returns:
            The log index of the command.
        """
        data = encode_command(KIND, {"name": name, "logs": logs})
        # Private: only this node's caller waits for it; other nodes' readers of the study see
        # it with the leader's next message to them (the coordinator, which acts on trials,
        # applies it at once), and a job's own records, which watchers follow, are not private.
        return await self.driver.propose(data, uuid.uuid4().hex, timeout, private=True)


class ReplicatedJournalBackend(BaseJournalBackend):
    """An Optuna journal backend reading this node's applied log and writing through consensus.

    Example:
        ``optuna.storages.JournalStorage(journal.backend())`` — from any thread but the loop's.

    Args:
        journal: The node's :class:`ReplicatedJournal`.
        name: Which journal of the log.
        timeout: Seconds ``append_logs`` keeps trying (default: the driver's propose timeout).
    """

    def __init__(self, journal: ReplicatedJournal, name: str = DEFAULT_NAME,
                 timeout: float | None = None) -> None:
        self._journal = journal
        self._name = name
        self._timeout = timeout

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        """Logs numbered ``log_number_from`` and above, as applied on this node."""
        return self._journal.read(self._name, log_number_from)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Commits ``logs`` and returns once this node has applied them.

        Raises:
            RuntimeError: called on the driver's event loop thread (it would deadlock).
            TimeoutError: not committed within the timeout (the cluster has no quorum).
            MeshStopped: the node stopped.
        """
        loop = self._journal.driver.loop
        if loop is None:
            raise MeshStopped(f"node {self._journal.driver.node_id} has not started")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("append_logs blocks until the event loop applies the entry: "
                               "call it from another thread (e.g. asyncio.to_thread)")
        future = asyncio.run_coroutine_threadsafe(
            self._journal.append(self._name, logs, self._timeout), loop)
        future.result()

    def __getstate__(self) -> dict[str, Any]:
        return {"node_id": self._journal.driver.node_id, "name": self._name,
                "timeout": self._timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        journal = _LIVE.get(state["node_id"])
        if journal is None:
            raise RuntimeError(f"node {state['node_id']} does not run in this process: a "
                               "replicated journal backend can only be unpickled next to its node")
        self._journal = journal
        self._name = state["name"]
        self._timeout = state["timeout"]
