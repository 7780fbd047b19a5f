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

Fencing: the coordinator's journal writes (asking a trial, failing a lost one, enqueuing a
re-run) are its decisions, valid only while it leads, so they are fenced to its term like its
job records (:mod:`nexus_node.consensus.state`): never forwarded, and void unless its own node
appends them while leading in that term. Optuna makes those writes deep inside ``study.ask()``
and friends, where no argument can carry a term, so the term travels in a context variable:
:func:`fenced_context` gives the context the coordinator's tasks run in, ``asyncio.to_thread``
carries it to the thread that calls Optuna, and :meth:`ReplicatedJournalBackend.append_logs`
reads it there. Every other write (a runner's, a user's through the storage proxy) is not
fenced and reaches the leader from any node.

Snapshots: a snapshot holds each journal compacted (:mod:`nexus_node.study.compaction`: one
operation per trial, the same study and trial ids), and restoring one replaces the journals.
A ``JournalStorage`` that already read a journal cannot follow it being replaced (it replays
only what is appended after what it read), so each restore starts a new *generation* and a
backend of an older one refuses every call with :class:`JournalReplaced`: its storage stops,
it never answers from a mix of the two journals (a write's own replay, which tells Optuna the
id of the trial it created, would be lost). The node reads its storages through
:class:`~nexus_node.study.storages.StudyStorages`, which builds new ones for the new generation.

Threads: Optuna's storage is synchronous (the node's ``StorageService`` runs writes on a thread
pool, see api/storage_service.py), while the driver lives on the event loop. ``append_logs`` hands the
proposal to the loop and blocks its own thread; calling it *on* the loop thread would deadlock
the loop that must apply the entry, so it refuses. Applied logs are guarded by a lock because
readers are on other threads.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
import uuid
import weakref
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator, TypeGuard

from optuna.distributions import json_to_distribution
from optuna.storages.journal import BaseJournalBackend
from optuna.study import StudyDirection
from optuna.trial import TrialState

from nexus_node.consensus.driver import MeshStopped, RaftDriver
from nexus_node.consensus.state import encode_command
from nexus_node.study.compaction import compact
from nexus_node.study.ops import Op

#: The state machine's command kind for journal appends.
KIND = "optuna_journal"
#: The journal every job's study lives in, unless a caller picks another name.
DEFAULT_NAME = "optuna"

# node id -> the live journal of that node in this process; lets a pickled backend find its
# node again (Optuna pickles storages, e.g. in its own test suite). Weak: a stopped node's
# journal goes away with it.
_LIVE: "weakref.WeakValueDictionary[str, ReplicatedJournal]" = weakref.WeakValueDictionary()

#: Most logs in one snapshot item: a long journal is split so that no single item is huge.
SNAPSHOT_ITEM_LOGS = 5_000

#: The term the journal writes of the current context are fenced to (None: not fenced).
_FENCE: contextvars.ContextVar[int | None] = contextvars.ContextVar("nexus_journal_fence", default=None)


def fenced_context(term: int | None) -> contextvars.Context:
    """A copy of the current context in which journal writes are fenced to ``term``: pass it
    to ``asyncio.create_task(..., context=...)`` for the coordinator's tasks; the tasks and
    threads they start inherit it."""
    ctx = contextvars.copy_context()
    ctx.run(_FENCE.set, term)
    return ctx


class JournalReplaced(RuntimeError):
    """A snapshot replaced the journal this backend read: its storage cannot follow (see the
    module docstring). The call may be retried on a storage built since."""

    @classmethod
    def of(cls, name: str) -> "JournalReplaced":
        return cls(f"journal {name!r} was replaced by a snapshot since this storage read it: "
                   "retry on a storage built since (StudyStorages)")


_CALL = threading.local()


def start_call() -> None:
    """Marks the start of one storage call on this thread (see :func:`call_appended`)."""
    _CALL.appended = False
    _CALL.applied = False


def call_applied() -> bool:
    """Whether every write the call started on this thread sent was applied (the backend
    returned from it): then only the storage's replay of it failed."""
    return bool(getattr(_CALL, "applied", False))


def call_appended() -> bool:
    """Whether the storage call started on this thread (:func:`start_call`) sent a write to
    the log: a call refused with :class:`JournalReplaced` that did not may be run again on a
    storage built since, with nothing written twice."""
    return bool(getattr(_CALL, "appended", False))


def fence() -> int | None:
    """The term the current context's journal writes are fenced to, if any."""
    return _FENCE.get()


_OPS = frozenset(v for k, v in vars(Op).items() if k.isupper())
_STATES = frozenset(s.value for s in TrialState)
_DIRECTIONS = frozenset(d.value for d in StudyDirection)


def _need(log: dict[str, Any], key: str, check: Any, what: str) -> None:
    if key not in log or not check(log[key]):
        raise ValueError(f"journal op {log['op_code']}: {key} must be {what}")


def _maybe(log: dict[str, Any], key: str, check: Any, what: str) -> None:
    if key in log and not check(log[key]):
        raise ValueError(f"journal op {log['op_code']}: {key} must be {what}")


def _is_int(v: object) -> bool:
    return type(v) is int


def _is_number(v: object) -> bool:
    return type(v) in (int, float)


def _is_time(v: object) -> bool:
    if v is None:
        return True
    if type(v) is not str:
        return False
    try:
        datetime.fromisoformat(v)
    except ValueError:
        return False
    return True


def _one_attr(v: object) -> bool:
    # Optuna asserts exactly one attribute per log (JournalStorage applies them so).
    return type(v) is dict and len(v) == 1 and all(type(k) is str for k in v)


def _str_dict(v: object) -> TypeGuard[dict[str, Any]]:
    return type(v) is dict and all(type(k) is str for k in v)


def _distributions(v: object) -> bool:
    if not _str_dict(v):
        return False
    try:
        for text in v.values():
            json_to_distribution(text)
    except (ValueError, TypeError, KeyError, AttributeError):
        return False
    return True


def _check_log(log: object) -> None:
    """One Optuna journal log: the fields its op needs, with their types, so that replaying it
    (``JournalStorageReplayResult.apply_logs``, on every node and in every runner) cannot
    raise. The values themselves are Optuna's business."""
    if type(log) is not dict:
        raise ValueError("a journal log is an object")
    op = log.get("op_code")
    if type(op) is not int or op not in _OPS:
        raise ValueError(f"journal op_code {op!r:.20} is not one of Optuna's")
    _need(log, "worker_id", lambda v: type(v) is str, "a string")
    J = Op
    if op == J.CREATE_STUDY:
        _need(log, "study_name", lambda v: type(v) is str, "a string")
        _need(log, "directions", lambda v: type(v) is list and all(type(d) is int and d in _DIRECTIONS for d in v),
              "a list of study directions")
    elif op in (J.DELETE_STUDY, J.SET_STUDY_USER_ATTR, J.SET_STUDY_SYSTEM_ATTR, J.CREATE_TRIAL):
        _need(log, "study_id", _is_int, "an int")
        if op == J.SET_STUDY_USER_ATTR:
            _need(log, "user_attr", _one_attr, "one attribute")
        elif op == J.SET_STUDY_SYSTEM_ATTR:
            _need(log, "system_attr", _one_attr, "one attribute")
        elif op == J.CREATE_TRIAL:
            _need(log, "datetime_start", _is_time, "an ISO time or null")
            _maybe(log, "datetime_complete", _is_time, "an ISO time or null")
            _maybe(log, "distributions", _distributions, "distributions")
            _maybe(log, "params", _str_dict, "an object")
            if set(log.get("params", {})) - set(log.get("distributions", {})):
                raise ValueError("journal op 4: a param has no distribution")
            _maybe(log, "state", lambda v: type(v) is int and v in _STATES, "a trial state")
            _maybe(log, "value", lambda v: v is None or _is_number(v), "a number or null")
            _maybe(log, "values", lambda v: v is None or (type(v) is list and all(map(_is_number, v))),
                   "a list of numbers or null")
            _maybe(log, "user_attrs", _str_dict, "an object")
            _maybe(log, "system_attrs", _str_dict, "an object")
            _maybe(log, "intermediate_values", lambda v: _str_dict(v) and all(
                k.lstrip("-").isdigit() for k in v), "an object keyed by step")
    elif op == J.DISCARD_TRIALS:
        pass   # Optuna skips it
    else:
        _need(log, "trial_id", _is_int, "an int")
        if op == J.SET_TRIAL_PARAM:
            _need(log, "param_name", lambda v: type(v) is str, "a string")
            _need(log, "param_value_internal", _is_number, "a number")
            _need(log, "distribution", lambda v: _distributions({"d": v}), "a distribution")
        elif op == J.SET_TRIAL_STATE_VALUES:
            _need(log, "state", lambda v: type(v) is int and v in _STATES, "a trial state")
            _maybe(log, "values", lambda v: v is None or (type(v) is list and all(map(_is_number, v))),
                   "a list of numbers or null")
            _maybe(log, "datetime_start", _is_time, "an ISO time or null")
            _maybe(log, "datetime_complete", _is_time, "an ISO time or null")
        elif op == J.SET_TRIAL_INTERMEDIATE_VALUE:
            _need(log, "step", _is_int, "an int")
            _need(log, "intermediate_value", _is_number, "a number")
        elif op == J.SET_TRIAL_USER_ATTR:
            _need(log, "user_attr", _one_attr, "one attribute")
        elif op == J.SET_TRIAL_SYSTEM_ATTR:
            _need(log, "system_attr", _one_attr, "one attribute")


def validate_body(body: Any) -> None:
    """Checks a journal command (``{"name": ..., "logs": [...]}``) before it is proposed or
    stored: see :func:`_check_log` for each log.

    Raises:
        ValueError: what is wrong.
    """
    if type(body) is not dict or type(body.get("name")) is not str or not body["name"]:
        raise ValueError("a journal command names its journal")
    logs = body.get("logs")
    if type(logs) is not list or not logs:
        raise ValueError("a journal command carries a list of logs")
    for log in logs:
        _check_log(log)


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
        # The lists are only appended to, and a restore puts new ones, so a snapshot captures
        # a list and its length.
        self._journals: dict[str, list[str]] = {}
        #: Bumped by every restore (see the module docstring).
        self.generation = 0
        driver.state.register(KIND, self._apply, validate=validate_body,
                              capture=self._capture, restore=self._restore)
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

    def _capture(self) -> Callable[[], Iterator[dict[str, Any]]]:
        """Items ``{"name": ..., "logs": [...]}``: each journal compacted, at most
        :data:`SNAPSHOT_ITEM_LOGS` logs an item (compacted when the items are read, on the
        caller's thread)."""
        with self._lock:
            taken = [(name, logs, len(logs)) for name, logs in self._journals.items()]

        def items() -> Iterator[dict[str, Any]]:
            for name, logs, length in taken:
                short = compact(json.loads(x) for x in logs[:length])
                for at in range(0, len(short), SNAPSHOT_ITEM_LOGS):
                    yield {"name": name, "logs": short[at:at + SNAPSHOT_ITEM_LOGS]}
        return items

    def _restore(self, items: Iterable[Any]) -> None:
        """Replaces every journal by a snapshot's (the items of one name, concatenated), and
        starts a new generation: storages built on the old journals stop (see the module
        docstring).

        Raises:
            ValueError: an item is not ``{"name": ..., "logs": [...]}`` of well-formed logs.
        """
        journals: dict[str, list[str]] = {}
        for item in items:
            if type(item) is not dict or set(item) != {"name", "logs"} or type(item["name"]) is not str \
                    or not item["name"] or type(item["logs"]) is not list:
                raise ValueError('a journal item is {"name": ..., "logs": [...]}')
            for log in item["logs"]:
                _check_log(log)
            journals.setdefault(item["name"], []).extend(
                json.dumps(x, separators=(",", ":")) for x in item["logs"])
        with self._lock:
            self._journals = journals
            self.generation += 1

    def read(self, name: str, log_number_from: int, generation: int | None = None) -> list[dict[str, Any]]:
        """Applied logs of journal ``name`` from ``log_number_from`` on (fresh dicts).

        Raises:
            JournalReplaced: ``generation`` is given and a restore has replaced it.
        """
        with self._lock:
            if generation is not None and generation != self.generation:
                raise JournalReplaced.of(name)
            raw = self._journals.get(name, [])[log_number_from:]
        return [json.loads(x) for x in raw]

    def __len__(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._journals.values())

    def backend(self, name: str = DEFAULT_NAME, timeout: float | None = None) -> "ReplicatedJournalBackend":
        """A journal backend over journal ``name`` of this node."""
        return ReplicatedJournalBackend(self, name, timeout)

    async def append(self, name: str, logs: list[dict[str, Any]], timeout: float | None = None,
                     term: int | None = None) -> int:
        """Commits ``logs`` to journal ``name`` and waits until this node has applied them.

        Args:
            term: Fence the write to this term (see the module docstring).

        Returns:
            The log index of the command.

        Raises:
            NotLeader: fenced to a term this node does not lead in (any more).
        """
        data = encode_command(KIND, {"name": name, "logs": logs}, term)
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
        self.generation = journal.generation

    @property
    def stale(self) -> bool:
        """A snapshot replaced the journal since this backend was made: every call refuses."""
        return self.generation != self._journal.generation

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        """Logs numbered ``log_number_from`` and above, as applied on this node.

        Raises:
            JournalReplaced: the backend is :attr:`stale`.
        """
        return self._journal.read(self._name, log_number_from, self.generation)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Commits ``logs`` and returns once this node has applied them.

        Raises:
            RuntimeError: called on the driver's event loop thread (it would deadlock).
            TimeoutError: not committed within the timeout (the cluster has no quorum).
            MeshStopped: the node stopped.
            NotLeader: the calling context is fenced (:func:`fenced_context`) to a term this
                node does not lead in (any more); nothing was written.
            JournalReplaced: the backend is :attr:`stale`: nothing was written, or, if the
                journal was replaced while the write waited, it may have been.
        """
        if self.stale:
            raise JournalReplaced.of(self._name)
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
        _CALL.appended, _CALL.applied = True, False
        future = asyncio.run_coroutine_threadsafe(
            self._journal.append(self._name, logs, self._timeout, _FENCE.get()), loop)
        future.result()
        _CALL.applied = True
        # The storage's own replay of this write, which follows, must read the journal the
        # write went to: if that was replaced meanwhile, it says so instead (in read_logs).

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
        self.generation = journal.generation   # an unpickled storage replays from the start
