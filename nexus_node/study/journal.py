"""Optuna's journal on the replicated log: one history of every study, applied on every node.

Optuna's :class:`~optuna.storages.JournalStorage` keeps its state by replaying an append-only list
of operation logs, built for many writers sharing that list. Here the list is part of the
replicated state machine, and each node applies it, in log order, into its study tables on disk
(:mod:`nexus_node.study.study_db`) instead of replaying it into memory:

* :class:`ReplicatedJournal` is the state machine's handler for journal commands: a committed
  batch of logs of a named journal is applied on every node, by Optuna's replay rules.
* :class:`~nexus_node.study.replicated_storage.ReplicatedStorage` is the Optuna storage a node
  serves: reads are local (the tables, never a network call); a write commits its logs through
  consensus and returns once this node has applied them, with the outcome Optuna's replay gives
  its writer (a new trial's id, a refusal). Each call carries a fresh proposal id, so a write
  retried across a failover is applied once.

Fencing: the coordinator's journal writes (asking a trial, failing a lost one, enqueuing a
re-run) are its decisions, valid only while it leads, so they are fenced to its term like its
job records (:mod:`nexus_node.consensus.state`): never forwarded, and void unless its own node
appends them while leading in that term. Optuna makes those writes deep inside ``study.ask()``
and friends, where no argument can carry a term, so the term travels in a context variable:
:func:`fenced_context` gives the context the coordinator's tasks run in, ``asyncio.to_thread``
carries it to the thread that calls Optuna, and the storage's write reads it there. Every other
write (a runner's, a user's through the storage proxy) is not fenced and reaches the leader from
any node.

Snapshots and restarts: a snapshot holds the tables (one item per study, trials in Optuna's
trial-creation form, the same ids), and restoring one replaces them. The tables are durable on
their own and record the log index they hold, so a restarted node neither restores its snapshot
into them nor applies an entry again that they already hold: its start-up does not depend on how
many trials the cluster ever ran.

Threads: the driver's loop applies; the storage is called from other threads (Optuna's API is
synchronous). A write hands its proposal to the loop and blocks its own thread; calling it *on*
the loop thread would deadlock the loop that must apply the entry, so it refuses.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import math
import uuid
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, TypeGuard

from optuna.distributions import json_to_distribution
from optuna.study import StudyDirection
from optuna.trial import TrialState

from nexus_node.consensus.driver import MeshStopped, RaftDriver
from nexus_node.consensus.state import encode_command
from nexus_node.study.ops import Op
from nexus_node.study.study_db import StudyDB, is_time, is_whole

if TYPE_CHECKING:   # replicated_storage imports this module
    from nexus_node.study.replicated_storage import ReplicatedStorage

log = logging.getLogger(__name__)

#: The state machine's command kind for journal appends.
KIND = "optuna_journal"
#: The journal every job's study lives in, unless a caller picks another name.
DEFAULT_NAME = "optuna"

# node id -> the live journal of that node in this process; lets a pickled storage find its
# node again (Optuna pickles storages, e.g. in its own test suite). Weak: a stopped node's
# journal goes away with it.
_LIVE: "weakref.WeakValueDictionary[str, ReplicatedJournal]" = weakref.WeakValueDictionary()

#: The term the journal writes of the current context are fenced to (None: not fenced).
_FENCE: contextvars.ContextVar[int | None] = contextvars.ContextVar("nexus_journal_fence", default=None)


def fenced_context(term: int | None) -> contextvars.Context:
    """A copy of the current context in which journal writes are fenced to ``term``: pass it
    to ``asyncio.create_task(..., context=...)`` for the coordinator's tasks; the tasks and
    threads they start inherit it."""
    ctx = contextvars.copy_context()
    ctx.run(_FENCE.set, term)
    return ctx


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


def _is_number(v: object) -> bool:
    return type(v) in (int, float)


def _is_finite(v: object) -> bool:
    return type(v) in (int, float) and math.isfinite(v)   # type: ignore[arg-type]


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
    """One Optuna journal log: the fields its op needs, with their types, so that applying it
    (:meth:`StudyDB.apply`, on every node, by the rules of Optuna's journal replay) cannot
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
        _need(log, "study_id", is_whole, "an int")
        if op == J.SET_STUDY_USER_ATTR:
            _need(log, "user_attr", _one_attr, "one attribute")
        elif op == J.SET_STUDY_SYSTEM_ATTR:
            _need(log, "system_attr", _one_attr, "one attribute")
        elif op == J.CREATE_TRIAL:
            _need(log, "datetime_start", is_time, "an ISO time or null")
            _maybe(log, "datetime_complete", is_time, "an ISO time or null")
            _maybe(log, "distributions", _distributions, "distributions")
            _maybe(log, "params", lambda v: _str_dict(v) and all(map(_is_finite, v.values())),
                   "an object of finite numbers")
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
        _need(log, "trial_id", is_whole, "an int")
        if op == J.SET_TRIAL_PARAM:
            _need(log, "param_name", lambda v: type(v) is str, "a string")
            _need(log, "param_value_internal", _is_finite, "a finite number")
            _need(log, "distribution", lambda v: _distributions({"d": v}), "a distribution")
        elif op == J.SET_TRIAL_STATE_VALUES:
            _need(log, "state", lambda v: type(v) is int and v in _STATES, "a trial state")
            _maybe(log, "values", lambda v: v is None or (type(v) is list and all(map(_is_number, v))),
                   "a list of numbers or null")
            _maybe(log, "datetime_start", is_time, "an ISO time or null")
            _maybe(log, "datetime_complete", is_time, "an ISO time or null")
        elif op == J.SET_TRIAL_INTERMEDIATE_VALUE:
            _need(log, "step", is_whole, "an int")
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


class OutcomeUnknown(RuntimeError):
    """A write took effect through a snapshot this node installed while it waited, so this node
    never applied it itself and cannot tell its outcome (the id of what it created, or its
    refusal). Read the study to find out what happened."""


#: Journal commands applied between two checkpoints of the study tables (StudyDB.checkpoint).
CHECKPOINT_EVERY = 500

#: Outcomes kept for writers that have not picked them up (a writer that timed out never does).
_OUTCOMES_KEPT = 10_000


class ReplicatedJournal:
    """The applied Optuna journals of one node (several named journals can share a log), in its
    study tables.

    Registers itself with ``driver.state`` for :data:`KIND` commands; create it before
    :meth:`RaftDriver.start` so that the log replayed at start-up reaches it.

    Args:
        driver: The node's driver.
        tables: The study tables (:func:`~nexus_node.study.study_db.open_study_tables`), or
            their file; None: in memory.
    """

    def __init__(self, driver: RaftDriver, tables: StudyDB | Path | None = None) -> None:
        self.driver = driver
        self.db = tables if isinstance(tables, StudyDB) else StudyDB(tables)
        #: Starts the worker id of every log this node's storages write: the outcomes of those
        #: commands are kept for their writers (:meth:`write`).
        self.writer_prefix = f"{driver.node_id}:{uuid.uuid4().hex[:12]}:"
        self._outcomes: collections.OrderedDict[int, list[Any]] = collections.OrderedDict()
        self._applied_since_checkpoint = 0
        self._checkpointing: asyncio.Future[None] | None = None
        driver.state.register(KIND, self._apply, validate=validate_body, capture=self._capture,
                              restore=self._restore, persisted=lambda: self.db.applied)
        _LIVE[driver.node_id] = self

    def _apply(self, body: Any, index: int) -> int:
        if index <= self.db.applied:
            return 0   # the tables hold it already (a restarted node replaying its log)
        body = body if isinstance(body, dict) else {}
        name, logs = body.get("name"), body.get("logs")
        if not isinstance(name, str) or not isinstance(logs, list) or not logs or \
                not all(isinstance(x, dict) for x in logs):
            # Same skip on every node: the command is committed, refusing it cannot undo that.
            return 0
        outcomes = self.db.apply(name, logs, index)
        self._applied_since_checkpoint += 1
        if self._applied_since_checkpoint >= CHECKPOINT_EVERY and self._checkpointing is None \
                and self.driver.loop is not None:
            self._applied_since_checkpoint = 0
            self._checkpointing = self.driver.loop.run_in_executor(None, self.db.checkpoint)
            self._checkpointing.add_done_callback(self._checkpointed)
        if str(logs[0].get("worker_id", "")).startswith(self.writer_prefix):
            self._outcomes[index] = outcomes
            while len(self._outcomes) > _OUTCOMES_KEPT:
                self._outcomes.popitem(last=False)
        return len(logs)

    def _checkpointed(self, done: "asyncio.Future[None]") -> None:
        self._checkpointing = None
        if not done.cancelled() and done.exception() is not None:
            log.warning("checkpoint of %s failed: %s", self.db.path, done.exception())

    def _capture(self) -> Callable[[], Iterator[dict[str, Any]]]:
        """The tables as they are at the state machine's applied index, read later on the
        caller's thread (:meth:`StudyDB.reader`)."""
        self.db.mark(self.driver.state.applied_index)
        return self.db.reader().items

    def _restore(self, items: Iterable[Any], index: int) -> None:
        """Replaces every journal's tables by a snapshot's items.

        Raises:
            ValueError: an item is malformed; nothing changed.
        """
        self.db.replace(items, index)
        self._applied_since_checkpoint = CHECKPOINT_EVERY   # the whole tables are in the WAL now

    def storage(self, name: str = DEFAULT_NAME, timeout: float | None = None) -> "ReplicatedStorage":
        """An Optuna storage over journal ``name`` of this node."""
        from nexus_node.study.replicated_storage import ReplicatedStorage
        return ReplicatedStorage(self, name, timeout)

    def write(self, name: str, logs: list[dict[str, Any]], timeout: float | None = None) -> list[Any]:
        """Commits ``logs`` to journal ``name`` from a thread other than the loop's, and returns
        each log's outcome once this node has applied them (:meth:`StudyDB.apply`). The logs'
        worker ids must start with :attr:`writer_prefix`.

        Raises:
            RuntimeError: called on the driver's event loop thread (it would deadlock).
            TimeoutError: not committed within the timeout (the cluster has no quorum).
            MeshStopped: the node stopped.
            NotLeader: the calling context is fenced (:func:`fenced_context`) to a term this
                node does not lead in (any more); nothing was written.
            OutcomeUnknown: see the class.
        """
        loop = self.driver.loop
        if loop is None:
            raise MeshStopped(f"node {self.driver.node_id} has not started")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("a study write blocks until the event loop applies it: "
                               "call it from another thread (e.g. asyncio.to_thread)")
        index = asyncio.run_coroutine_threadsafe(self.append(name, logs, timeout, _FENCE.get()), loop).result()
        outcomes = self._outcomes.pop(index, None)
        if outcomes is None:
            raise OutcomeUnknown(f"the write at log index {index} took effect through a snapshot this node "
                                 "installed meanwhile; read the study to see what it did")
        return outcomes

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

