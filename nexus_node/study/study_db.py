"""The node's Optuna studies on disk: the replicated journal applied into SQLite.

Optuna's ``JournalStorage`` keeps a study's whole state in memory, rebuilt at every start by
replaying its journal; a node held that state twice (a reading and a writing storage) beside
the journal itself, so its memory and its start-up grew with the cluster's history (issue 23).
Here the journal's operations are applied, in log order and with exactly the rules of Optuna's
replay (``JournalStorageReplayResult``), into tables in ``studies.db``; the node keeps in memory
only the trials of the few studies it read last (:class:`StudyDB` ``cache_studies``).

Rows:

* ``studies``: each live study, with its name, directions and attributes (JSON). A deleted
  study's row, and its trials, are removed; its id is never given again. (Optuna's journal
  keeps a deleted study's trials readable by id; here they go with it, as in Optuna's RDB
  storage: the disk a deleted job used comes back.)
* ``trials``: each trial with its id, study, number and state, and the rest as one JSON object
  in the form of Optuna's trial-creation operation (``create_new_trial(template_trial=...)``:
  parameters in their internal form with their distributions, attributes, intermediate values,
  values, start and end). A snapshot writes trials in exactly this form, one item per trial.
* ``journals``: per journal name, the next study and trial ids (Optuna numbers both in
  creation order, deleted ones included).
* ``meta``: ``applied``, the log index whose state the tables hold (see
  :class:`~nexus_node.study.journal.ReplicatedJournal`: a restarted node neither restores a
  snapshot into them nor applies an entry again that they already hold).

Each applied command is one SQLite transaction that also moves ``applied``, so a crash leaves
the tables at one index or the next, never between. WAL with ``synchronous=NORMAL``: a process
killed at any point loses nothing committed; a machine that loses power may lose the last
commits, which the log (the durable record) applies again. A commit writes the WAL without an
fsync; the checkpoints, which do fsync, run on a thread (:meth:`StudyDB.checkpoint`).

Outcomes: Optuna raises a refused operation (a study name in use, a finished trial) to the
worker that wrote it and skips it silently everywhere else. :meth:`StudyDB.apply` returns each
operation's outcome (an id, whether a RUNNING trial was taken, or the exception), which only
the writer's node keeps (study/journal.py).

Threads: one connection, used under :attr:`StudyDB.lock` (the driver's loop applies, the
storage's callers read on their threads); :meth:`StudyDB.reader` opens a second connection
whose read transaction is a snapshot of one index, for a snapshot written on another thread.
"""

from __future__ import annotations

import collections
import copy
import json
import logging
import math
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Container, Iterable, Iterator

from optuna.distributions import BaseDistribution, check_distribution_compatibility, json_to_distribution
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from nexus_node.consensus.integrity import STUDIES_FILE, STUDY_FILES
from nexus_node.study.ops import Op
from nexus_node.study.wire import StudyRecord

#: Optuna's storages' message for a study or trial that does not exist.
NOT_FOUND = "Record does not exist."
#: Optuna's message for a write to a finished trial.
UNUPDATABLE = "Trial#{number} has already finished and can not be updated."

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS journals (name TEXT PRIMARY KEY, next_study INTEGER NOT NULL,
                                     next_trial INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS studies (journal TEXT NOT NULL, study_id INTEGER NOT NULL, name TEXT NOT NULL,
                                    directions TEXT NOT NULL, user_attrs TEXT NOT NULL,
                                    system_attrs TEXT NOT NULL, trials INTEGER NOT NULL,
                                    PRIMARY KEY (journal, study_id));
CREATE UNIQUE INDEX IF NOT EXISTS studies_by_name ON studies (journal, name);
CREATE TABLE IF NOT EXISTS params (journal TEXT NOT NULL, study_id INTEGER NOT NULL, name TEXT NOT NULL,
                                   distribution TEXT NOT NULL, PRIMARY KEY (journal, study_id, name));
CREATE TABLE IF NOT EXISTS trials (journal TEXT NOT NULL, trial_id INTEGER NOT NULL, study_id INTEGER NOT NULL,
                                   number INTEGER NOT NULL, state INTEGER NOT NULL, body TEXT NOT NULL,
                                   PRIMARY KEY (journal, trial_id));
CREATE INDEX IF NOT EXISTS trials_by_study ON trials (journal, study_id, number);
"""

#: Trials in one snapshot item.
SNAPSHOT_ITEM_TRIALS = 2_000
#: SQLite's page cache of the applying connection and of each reading thread's, in KiB.
MAIN_CACHE_KIB = 1024
READER_CACHE_KIB = 256

log = logging.getLogger(__name__)

_FINISHED = tuple(int(s) for s in TrialState if s.is_finished())
_DIRECTIONS = frozenset(int(d) for d in StudyDirection)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


#: Ids and steps fit SQLite's integers (a 64-bit signed int).
INT_LIMIT = 1 << 63


def is_whole(v: object) -> bool:
    """An int that SQLite stores (and not a bool)."""
    return type(v) is int and -INT_LIMIT <= v < INT_LIMIT


def is_time(v: object) -> bool:
    """None, or an ISO time that converts to local time on any node (years 1900 to 9998,
    whatever the node's time zone: Optuna's replay keeps times as naive local times)."""
    if v is None:
        return True
    if type(v) is not str:
        return False
    try:
        t = datetime.fromisoformat(v)
    except ValueError:
        return False
    return 1900 <= t.year <= 9998


def _local(text: str | None) -> datetime | None:
    # As Optuna's journal replay: naive local time.
    return None if text is None else datetime.fromisoformat(text).astimezone().replace(tzinfo=None)


class _Distributions:
    """Parsed distributions by their JSON (a study's trials share a few)."""

    def __init__(self, size: int = 256) -> None:
        self._parsed: collections.OrderedDict[str, BaseDistribution] = collections.OrderedDict()
        self._size = size

    def __call__(self, text: str) -> BaseDistribution:
        dist = self._parsed.get(text)
        if dist is None:
            dist = self._parsed[text] = json_to_distribution(text)
            if len(self._parsed) > self._size:
                self._parsed.popitem(last=False)
        return dist


def trial_body(log: dict[str, Any], parse: Any = json_to_distribution) -> dict[str, Any]:
    """The stored form of a trial-creation operation (checked: every parameter converts).

    Raises:
        ValueError: a parameter's value does not fit its distribution.
    """
    dists = dict(log.get("distributions", {}))
    params = dict(log.get("params", {}))
    for name, value in params.items():
        try:
            if not math.isfinite(value):
                raise ValueError(f"{value} is not a finite number")
            parse(dists[name]).to_external_repr(value)
        except (KeyError, IndexError, TypeError, ValueError, ArithmeticError) as exc:
            raise ValueError(f"parameter {name!r} does not fit its distribution ({exc})") from None
    for key in ("datetime_start", "datetime_complete"):
        if not is_time(log.get(key)):
            raise ValueError(f"{key} {log.get(key)!r:.40} is not an ISO time from 1900 to 9998")
    values = log.get("values")
    if values is None and log.get("value") is not None:
        values = [log["value"]]
    return {"datetime_start": log.get("datetime_start"), "datetime_complete": log.get("datetime_complete"),
            "distributions": dists, "params": params, "user_attrs": dict(log.get("user_attrs", {})),
            "system_attrs": dict(log.get("system_attrs", {})),
            "intermediate_values": {str(int(k)): v for k, v in log.get("intermediate_values", {}).items()},
            "values": None if values is None else list(values)}


def frozen_trial(trial_id: int, number: int, state: int, body: dict[str, Any],
                 parse: Any = json_to_distribution) -> FrozenTrial:
    """The FrozenTrial a stored trial is (as Optuna's journal replay builds it)."""
    dists = {k: parse(v) for k, v in body["distributions"].items()}
    return FrozenTrial(
        number=number, state=TrialState(state), value=None, values=body["values"],
        datetime_start=_local(body["datetime_start"]), datetime_complete=_local(body["datetime_complete"]),
        params={k: dists[k].to_external_repr(v) for k, v in body["params"].items()},
        distributions=dists, user_attrs=body["user_attrs"], system_attrs=body["system_attrs"],
        intermediate_values={int(k): v for k, v in body["intermediate_values"].items()},
        trial_id=trial_id)


class _Cached:
    """One study's trials in memory, in number order: each stored row, and its FrozenTrial once
    a reader built it (never during an apply: building one converts times to the node's zone)."""

    def __init__(self, rows: list[tuple[int, int, int, dict[str, Any]]], trials: list[FrozenTrial | None]) -> None:
        self.rows, self.trials = rows, trials
        self.at = {r[0]: i for i, r in enumerate(rows)}

    def put(self, trial_id: int, number: int, state: int, body: dict[str, Any]) -> None:
        at = self.at.get(trial_id)
        if at is None:
            self.at[trial_id] = len(self.rows)
            self.rows.append((trial_id, number, state, body))
            self.trials.append(None)
        else:
            # A new object in the slot, never a change to the old one, which a reader may hold.
            self.rows[at] = (trial_id, number, state, body)
            self.trials[at] = None


class StudyDB:
    """Applied Optuna journals in SQLite (see the module docstring).

    Args:
        path: The database file; None: in memory (tests).
        cache_studies: How many studies' trials stay in memory (the last read).
    """

    def __init__(self, path: Path | None = None, cache_studies: int = 4) -> None:
        self.path = path
        self.lock = threading.RLock()
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False,
                                   isolation_level=None)
        if path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # A checkpoint fsyncs the file: never on the loop that applies (see checkpoint()).
            self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.execute(f"PRAGMA cache_size=-{MAIN_CACHE_KIB}")
        self._db.executescript(_SCHEMA)
        self._parse = _Distributions()
        self._cache: collections.OrderedDict[tuple[str, int], _Cached] = collections.OrderedDict()
        self._cache_studies = cache_studies
        # Applies so far, and the last one that touched each study: a study read into memory
        # outside the lock goes into the cache only if nothing touched it meanwhile.
        self._version = 0
        self._touched: dict[tuple[str, int], int] = {}
        self._readers = threading.local()
        row = self._db.execute("SELECT value FROM meta WHERE key='applied'").fetchone()
        #: The log index whose state the tables hold.
        self.applied = int(row[0]) if row else 0

    def close(self) -> None:
        """Closes the tables, marked as closed cleanly (the next open need not check them)."""
        with self.lock:
            try:
                if self.path is not None:
                    self._db.execute("INSERT INTO meta VALUES ('clean', 1) ON CONFLICT(key) DO UPDATE SET value=1")
            finally:
                self._db.close()

    def opened_clean(self) -> bool:
        """Whether the last run closed the tables (:meth:`close`); the mark is cleared, so a
        run that ends in a crash leaves them unmarked."""
        with self.lock:
            row = self._db.execute("SELECT value FROM meta WHERE key='clean'").fetchone()
            self._db.execute("DELETE FROM meta WHERE key='clean'")
        return bool(row and row[0] == 1)

    def checkpoint(self) -> None:
        """Moves the write-ahead log into the file (SQLite's checkpoint, which fsyncs), on a
        connection of its own: call it on a thread, never on the loop that applies. Applies go
        on meanwhile; a reader's open snapshot only holds back what it still reads."""
        if self.path is None:
            return
        db = sqlite3.connect(str(self.path), isolation_level=None)
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            db.close()

    # ---- writes (the driver's loop) ------------------------------------------------------------

    def apply(self, name: str, logs: list[dict[str, Any]], index: int) -> list[Any]:
        """Applies one command's logs to journal ``name`` as the state at log ``index``.

        Returns:
            Each log's outcome: the new study's or trial's id, True/False for a trial set
            RUNNING (taken or not), None, or the exception Optuna raises to its writer.
        """
        with self.lock:
            db = self._db
            self._version += 1
            db.execute("BEGIN IMMEDIATE")
            try:
                outcomes = [self._apply_one(name, log) for log in logs]
                self._set_applied(index)
                db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            self.applied = index
            return outcomes

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")
        self._cache.clear()

    def mark(self, index: int) -> None:
        """Records that the tables hold the state at ``index`` too (no journal write since)."""
        with self.lock:
            if index > self.applied:
                self._set_applied(index)
                self.applied = index

    def _set_applied(self, index: int) -> None:
        self._db.execute("INSERT INTO meta VALUES ('applied', ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                         (index,))

    def _apply_one(self, name: str, log: dict[str, Any]) -> Any:
        """One log, in a savepoint: a refused log leaves nothing behind."""
        self._db.execute("SAVEPOINT log")
        outcome = self._apply_log(name, log)
        if isinstance(outcome, Exception):
            self._db.execute("ROLLBACK TO log")
            self._drop_cached(name, log)
        self._db.execute("RELEASE log")
        return outcome

    def _drop_cached(self, name: str, log: dict[str, Any]) -> None:
        # A refused log may have reached the cache before its refusal: forget that study.
        study = log.get("study_id")
        if study is None and is_whole(log.get("trial_id")):
            row = self._db.execute("SELECT study_id FROM trials WHERE journal=? AND trial_id=?",
                                   (name, log["trial_id"])).fetchone()
            study = row[0] if row else None
        if is_whole(study):
            self._cache.pop((name, int(study)), None)   # type: ignore[arg-type]

    def _apply_log(self, name: str, log: dict[str, Any]) -> Any:
        op = log["op_code"]
        try:
            if op == Op.CREATE_STUDY:
                return self._create_study(name, log["study_name"], [int(d) for d in log["directions"]])
            if op in (Op.DELETE_STUDY, Op.SET_STUDY_USER_ATTR, Op.SET_STUDY_SYSTEM_ATTR, Op.CREATE_TRIAL):
                study = self._study_row(name, log["study_id"])
                if study is None:
                    return KeyError(NOT_FOUND)
                if op == Op.DELETE_STUDY:
                    return self._delete_study(name, log["study_id"])
                if op == Op.CREATE_TRIAL:
                    return self._create_trial(name, log["study_id"], study[1], log)
                column = "user_attrs" if op == Op.SET_STUDY_USER_ATTR else "system_attrs"
                attrs = json.loads(study[0] if column == "user_attrs" else study[2])
                attrs.update(log["user_attr" if op == Op.SET_STUDY_USER_ATTR else "system_attr"])
                self._db.execute(f"UPDATE studies SET {column}=? WHERE journal=? AND study_id=?",
                                 (_dumps(attrs), name, log["study_id"]))
                return None
            if op == Op.DISCARD_TRIALS:
                return None   # as Optuna's replay
            return self._update_trial(name, log)
        except (ValueError, TypeError, KeyError, IndexError, ArithmeticError) as exc:
            # A log that the validators let through but that cannot be applied: skipped here
            # as on every node (the same rows everywhere), refused to its writer. (SQLite's
            # own errors, a full disk, are not the log's: they stop the node.)
            return ValueError(f"journal op {op}: {exc}")

    def _create_study(self, name: str, study_name: str, directions: list[int]) -> Any:
        if self._db.execute("SELECT 1 FROM studies WHERE journal=? AND name=?", (name, study_name)).fetchone():
            return DuplicatedStudyError(f"Another study with name '{study_name}' already exists.")
        study_id, _ = self._counters(name)
        self._db.execute("UPDATE journals SET next_study=next_study+1 WHERE name=?", (name,))
        self._db.execute("INSERT INTO studies VALUES (?,?,?,?,'{}','{}',0)",
                         (name, study_id, study_name, _dumps(directions)))
        self._touched[(name, study_id)] = self._version
        return study_id

    def _delete_study(self, name: str, study_id: int) -> None:
        for table in ("studies", "params", "trials"):
            self._db.execute(f"DELETE FROM {table} WHERE journal=? AND study_id=?", (name, study_id))
        self._cache.pop((name, study_id), None)
        self._touched.pop((name, study_id), None)

    def _counters(self, name: str) -> tuple[int, int]:
        row = self._db.execute("SELECT next_study, next_trial FROM journals WHERE name=?", (name,)).fetchone()
        if row is None:
            self._db.execute("INSERT INTO journals VALUES (?, 0, 0)", (name,))
            return 0, 0
        return int(row[0]), int(row[1])

    def _study_row(self, name: str, study_id: int) -> tuple[str, int, str] | None:
        row: tuple[str, int, str] | None = self._db.execute("SELECT user_attrs, trials, system_attrs FROM studies WHERE journal=? AND study_id=?",
                                (name, study_id)).fetchone()
        return row

    def _create_trial(self, name: str, study_id: int, number: int, log: dict[str, Any]) -> int:
        body = trial_body(log, self._parse)
        state = int(log.get("state", TrialState.RUNNING))
        for param in body["params"]:
            # Optuna's replay checks no template against the study: the first is only recorded.
            self._db.execute("INSERT OR IGNORE INTO params VALUES (?,?,?,?)",
                             (name, study_id, param, body["distributions"][param]))
        _, trial_id = self._counters(name)
        self._db.execute("UPDATE journals SET next_trial=next_trial+1 WHERE name=?", (name,))
        self._db.execute("UPDATE studies SET trials=trials+1 WHERE journal=? AND study_id=?", (name, study_id))
        self._db.execute("INSERT INTO trials VALUES (?,?,?,?,?,?)",
                         (name, trial_id, study_id, number, state, _dumps(body)))
        self._cached_put(name, study_id, trial_id, number, state, body)
        return trial_id

    def _check_param(self, name: str, study_id: int, param: str, dist: BaseDistribution, record: str) -> None:
        """Optuna's replay checks a parameter against the first trial of the study that has it;
        compatibility is one class and, for a categorical, the same choices, so any earlier
        trial's distribution of the parameter decides the same (the first one is kept)."""
        row = self._db.execute("SELECT distribution FROM params WHERE journal=? AND study_id=? AND name=?",
                               (name, study_id, param)).fetchone()
        if row is None:
            self._db.execute("INSERT INTO params VALUES (?,?,?,?)", (name, study_id, param, record))
        else:
            check_distribution_compatibility(self._parse(row[0]), dist)

    def _update_trial(self, name: str, log: dict[str, Any]) -> Any:
        op, trial_id = log["op_code"], log["trial_id"]
        row = self._db.execute("SELECT study_id, number, state, body FROM trials WHERE journal=? AND trial_id=?",
                               (name, trial_id)).fetchone()
        if row is None:
            return KeyError(NOT_FOUND)
        study_id, number, state, text = row
        if state in _FINISHED:
            return UpdateFinishedTrialError(UNUPDATABLE.format(number=number))
        body = json.loads(text)
        result: Any = None
        if op == Op.SET_TRIAL_PARAM:
            dist = self._parse(log["distribution"])
            if not math.isfinite(log["param_value_internal"]):
                raise ValueError(f"parameter value {log['param_value_internal']} is not finite")
            dist.to_external_repr(log["param_value_internal"])   # refuses a value that does not fit
            try:
                self._check_param(name, study_id, log["param_name"], dist, record=log["distribution"])
            except ValueError as exc:
                return exc
            body["params"][log["param_name"]] = log["param_value_internal"]
            body["distributions"][log["param_name"]] = log["distribution"]
        elif op == Op.SET_TRIAL_STATE_VALUES:
            new = int(log["state"])
            if new == state == TrialState.RUNNING:
                return False   # another worker took this WAITING trial first
            if new == TrialState.RUNNING:
                body["datetime_start"] = log["datetime_start"]
                result = True
            if new in _FINISHED:
                body["datetime_complete"] = log["datetime_complete"]
            if not is_time(body["datetime_start"]) or not is_time(body["datetime_complete"]):
                raise ValueError("a trial's times are ISO times from 1900 to 9998")
            state = new
            if log.get("values") is not None:
                body["values"] = list(log["values"])
        elif op == Op.SET_TRIAL_INTERMEDIATE_VALUE:
            body["intermediate_values"][str(log["step"])] = log["intermediate_value"]
        elif op == Op.SET_TRIAL_USER_ATTR:
            body["user_attrs"].update(log["user_attr"])
        elif op == Op.SET_TRIAL_SYSTEM_ATTR:
            body["system_attrs"].update(log["system_attr"])
        else:
            raise ValueError(f"unknown op_code {op}")
        self._db.execute("UPDATE trials SET state=?, body=? WHERE journal=? AND trial_id=?",
                         (state, _dumps(body), name, trial_id))
        self._cached_put(name, study_id, trial_id, number, state, body)
        return result

    def _cached_put(self, name: str, study_id: int, trial_id: int, number: int, state: int,
                    body: dict[str, Any]) -> None:
        self._touched[(name, study_id)] = self._version
        cached = self._cache.get((name, study_id))
        if cached is not None:
            cached.put(trial_id, number, state, body)

    # ---- reads (any thread) --------------------------------------------------------------------

    def _one_id(self, sql: str, args: tuple[Any, ...], missing: str = NOT_FOUND) -> int:
        """The id ``sql`` selects, or KeyError(``missing``) when it selects none."""
        with self.lock:
            row = self._db.execute(sql, args).fetchone()
        if row is None:
            raise KeyError(missing)
        return int(row[0])

    def study_id(self, name: str, study_name: str) -> int:
        return self._one_id("SELECT study_id FROM studies WHERE journal=? AND name=?", (name, study_name))

    def study(self, name: str, study_id: int) -> StudyRecord:
        with self.lock:
            row = self._db.execute("SELECT study_id, name, directions, user_attrs, system_attrs FROM studies "
                                   "WHERE journal=? AND study_id=?", (name, study_id)).fetchone()
        if row is None:
            raise KeyError(NOT_FOUND)
        return self._study_record(row)

    def studies(self, name: str) -> list[StudyRecord]:
        with self.lock:
            rows = self._db.execute("SELECT study_id, name, directions, user_attrs, system_attrs FROM studies "
                                    "WHERE journal=? ORDER BY study_id", (name,)).fetchall()
        return [self._study_record(r) for r in rows]

    @staticmethod
    def _study_record(row: tuple[Any, ...]) -> StudyRecord:
        # Optuna does not export its FrozenStudy; StudyRecord has its attributes (study/wire.py).
        return StudyRecord(int(row[0]), row[1], [StudyDirection(d) for d in json.loads(row[2])],
                           json.loads(row[3]), json.loads(row[4]))

    def trial(self, name: str, trial_id: int) -> FrozenTrial:
        """The trial, as a copy of its own: Optuna's ``Trial`` changes the one it holds."""
        with self.lock:
            row = self._db.execute("SELECT study_id, number, state, body FROM trials WHERE journal=? AND trial_id=?",
                                   (name, trial_id)).fetchone()
            if row is None:
                raise KeyError(NOT_FOUND)
            cached = self._cache.get((name, row[0]))
            if cached is None:
                return frozen_trial(trial_id, row[1], row[2], json.loads(row[3]), self._parse)
            trial = self._built(cached, cached.at[trial_id])
        own = copy.copy(trial)
        for attr in ("_params", "_distributions", "_user_attrs", "_system_attrs", "intermediate_values"):
            setattr(own, attr, dict(getattr(trial, attr)))
        return own

    def _built(self, cached: _Cached, at: int) -> FrozenTrial:
        trial = cached.trials[at]
        if trial is None:
            trial_id, number, state, body = cached.rows[at]
            trial = cached.trials[at] = frozen_trial(trial_id, number, state, body, self._parse)
        return trial

    def study_of_trial(self, name: str, trial_id: int) -> int:
        return self._one_id("SELECT study_id FROM trials WHERE journal=? AND trial_id=?", (name, trial_id))

    def trial_id(self, name: str, study_id: int, number: int) -> int:
        return self._one_id("SELECT trial_id FROM trials WHERE journal=? AND study_id=? AND number=?",
                            (name, study_id, number),
                            f"No trial with trial_number={number} exists in study with study_id={study_id}.")

    def trials(self, name: str, study_id: int, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        """The study's trials in number order (shared objects: never change them).

        A study not in memory is read on this thread's own connection, outside the lock (the
        loop, which applies, never waits for a large study to load), and kept in memory if no
        apply touched it meanwhile."""
        key = (name, study_id)
        with self.lock:
            if not self._db.execute("SELECT 1 FROM studies WHERE journal=? AND study_id=?", key).fetchone():
                raise KeyError(NOT_FOUND)
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                trials = [self._built(cached, i) for i in range(len(cached.rows))]
            elif self.path is None:   # in memory: one connection only
                rows = self._rows(self._db, key)
                trials = [frozen_trial(*r, parse=self._parse) for r in rows]
                self._keep(key, rows, list(trials))
            version = self._version
        if cached is None and self.path is not None:
            rows = self._rows(self._reader(), key)
            trials = [frozen_trial(*r, parse=self._parse) for r in rows]
            with self.lock:
                if self._touched.get(key, -1) <= version and key not in self._cache:
                    self._keep(key, rows, list(trials))
        if states is None:
            return trials
        return [t for t in trials if t.state in states]

    @staticmethod
    def _rows(db: sqlite3.Connection, key: tuple[str, int]) -> list[tuple[int, int, int, dict[str, Any]]]:
        rows = db.execute("SELECT trial_id, number, state, body FROM trials WHERE journal=? AND study_id=? "
                          "ORDER BY number", key).fetchall()
        return [(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    def _keep(self, key: tuple[str, int], rows: list[tuple[int, int, int, dict[str, Any]]],
              trials: list[FrozenTrial]) -> None:
        self._cache[key] = _Cached(rows, list[FrozenTrial | None](trials))
        while len(self._cache) > self._cache_studies:
            self._cache.popitem(last=False)

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection (WAL: it reads beside the applying one)."""
        db: sqlite3.Connection | None = getattr(self._readers, "db", None)
        if db is None:
            db = self._readers.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            db.execute(f"PRAGMA cache_size=-{READER_CACHE_KIB}")
        return db

    def n_trials(self, name: str, study_id: int, states: Container[TrialState] | None = None) -> int:
        return len(self.trials(name, study_id, states))

    # ---- snapshots -----------------------------------------------------------------------------

    def reader(self) -> "StudyDBReader":
        """A consistent view of the tables as they are now, to read on another thread (see
        :meth:`StudyDBReader.items`). In memory (tests): a copy."""
        with self.lock:
            if self.path is None:
                copy_db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
                self._db.backup(copy_db)
                return StudyDBReader(copy_db)
            view = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            view.execute("BEGIN")
            view.execute("SELECT count(*) FROM journals").fetchone()   # the read transaction starts here
            return StudyDBReader(view)

    def replace(self, items: Iterable[Any], index: int) -> None:
        """Replaces every journal by a snapshot's items (:meth:`StudyDBReader.items`), as the state
        at ``index``. All or nothing.

        Raises:
            ValueError: an item is malformed; nothing changed.
        """
        with self.lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                for table in ("journals", "studies", "params", "trials"):
                    db.execute(f"DELETE FROM {table}")
                for item in items:
                    self._insert_item(item)
                self._set_applied(index)
                db.execute("COMMIT")
            except BaseException as exc:
                self._rollback()
                if isinstance(exc, sqlite3.IntegrityError):
                    raise ValueError(f"a journal item repeats an id or a name ({exc})") from None
                if isinstance(exc, (TypeError, KeyError, AttributeError, ArithmeticError)):
                    raise ValueError(f"a journal item is malformed ({type(exc).__name__}: {exc})") from None
                raise
            finally:
                self._cache.clear()
                self._touched.clear()
            self.applied = index

    def _insert_item(self, item: Any) -> None:
        if type(item) is not dict or type(item.get("name")) is not str or not item["name"] or len(item) != 2:
            raise ValueError('a journal item is {"name": ..., and one of "journal", "study", "trials"}')
        name = item["name"]
        if "logs" in item:
            # A snapshot of the version before the study tables (a compacted journal: the same
            # study and trial ids when applied in order), from an older node or this node's
            # own last snapshot before an upgrade.
            if type(item["logs"]) is not list or not all(type(x) is dict and type(x.get("op_code")) is int
                                                         for x in item["logs"]):
                raise ValueError("a journal item's logs are a list of journal operations")
            for x in item["logs"]:
                self._apply_one(name, x)
            return
        if "journal" in item:
            j = item["journal"]
            if type(j) is not dict or set(j) != {"next_study", "next_trial"} or \
                    not all(type(v) is int and v >= 0 for v in j.values()):
                raise ValueError("a journal's counters are next_study and next_trial, whole numbers")
            self._db.execute("INSERT INTO journals VALUES (?,?,?)", (name, j["next_study"], j["next_trial"]))
        elif "study" in item:
            s = item["study"]
            if type(s) is not dict or set(s) != {"id", "name", "directions", "user_attrs", "system_attrs",
                                                   "trials", "params"}:
                raise ValueError("a study item is id, name, directions, user_attrs, system_attrs, trials, params")
            if type(s["id"]) is not int or type(s["name"]) is not str or type(s["trials"]) is not int or \
                    type(s["directions"]) is not list or \
                    not all(type(d) is int and d in _DIRECTIONS for d in s["directions"]) or \
                    type(s["user_attrs"]) is not dict or type(s["system_attrs"]) is not dict or \
                    type(s["params"]) is not dict:
                raise ValueError(f"study item {s.get('id')!r:.20} is malformed")
            for text in s["params"].values():
                json_to_distribution(text)
            self._db.execute("INSERT INTO studies VALUES (?,?,?,?,?,?,?)",
                             (name, s["id"], s["name"], _dumps(s["directions"]), _dumps(s["user_attrs"]),
                              _dumps(s["system_attrs"]), s["trials"]))
            self._db.executemany("INSERT INTO params VALUES (?,?,?,?)",
                                 [(name, s["id"], k, v) for k, v in s["params"].items()])
        elif "trials" in item:
            rows = item["trials"]
            if type(rows) is not list:
                raise ValueError("a trials item is a list of [trial_id, study_id, number, state, trial]")
            out = []
            for r in rows:
                if type(r) is not list or len(r) != 5 or not all(type(v) is int for v in r[:4]) or \
                        r[3] not in {int(s) for s in TrialState} or type(r[4]) is not dict:
                    raise ValueError("a trial is [trial_id, study_id, number, state, trial]")
                body = trial_body(r[4], self._parse)   # refuses what would not read back
                if not all(type(v) is dict for v in (body["user_attrs"], body["system_attrs"])):
                    raise ValueError(f"trial {r[0]}: its attributes are objects")
                out.append((name, r[0], r[1], r[2], r[3], _dumps(body)))
            self._db.executemany("INSERT INTO trials VALUES (?,?,?,?,?,?)", out)
        else:
            raise ValueError('a journal item holds "journal", "study" or "trials"')


class StudyDBReader:
    """The tables as one read transaction saw them (:meth:`StudyDB.reader`)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def items(self) -> Iterator[dict[str, Any]]:
        """Snapshot items: per journal its counters, each study (with its parameters' first
        distributions), then its trials, :data:`SNAPSHOT_ITEM_TRIALS` an item. The view stays
        open (to be read again) until this reader is dropped."""
        for name, next_study, next_trial in self._db.execute(
                "SELECT name, next_study, next_trial FROM journals ORDER BY name").fetchall():
            yield {"name": name, "journal": {"next_study": next_study, "next_trial": next_trial}}
            for sid, sname, directions, user, system, count in self._db.execute(
                    "SELECT study_id, name, directions, user_attrs, system_attrs, trials FROM studies "
                    "WHERE journal=? ORDER BY study_id", (name,)).fetchall():
                params = dict(self._db.execute("SELECT name, distribution FROM params WHERE journal=? AND "
                                               "study_id=?", (name, sid)).fetchall())
                yield {"name": name, "study": {"id": sid, "name": sname, "directions": json.loads(directions),
                                               "user_attrs": json.loads(user), "system_attrs": json.loads(system),
                                               "trials": count, "params": params}}
            cursor = self._db.execute("SELECT trial_id, study_id, number, state, body FROM trials "
                                      "WHERE journal=? ORDER BY trial_id", (name,))
            while rows := cursor.fetchmany(SNAPSHOT_ITEM_TRIALS):
                yield {"name": name, "trials": [[r[0], r[1], r[2], r[3], json.loads(r[4])] for r in rows]}

    def __del__(self) -> None:
        self._db.close()   # ends the read transaction


def open_study_tables(data_dir: Path, fresh: bool = False) -> StudyDB:
    """The node's study tables (``studies.db`` in ``data_dir``). ``fresh``: a node with no log
    yet starts with none (tables without the log they were applied from are another
    history's). Damaged tables are set aside and the node rebuilds them from its snapshot and
    log, which hold everything they do.
    """
    path = data_dir / STUDIES_FILE
    if fresh:
        for name in STUDY_FILES:
            (data_dir / name).unlink(missing_ok=True)
    try:
        db = StudyDB(path)
        # SQLite's quick_check reads every page (about 50 ms for 30,000 trials): only after a
        # run that did not close the tables.
        if db.opened_clean() or db._db.execute("PRAGMA quick_check").fetchone()[0] == "ok":
            return db
        db.close()
        problem = "quick_check failed"
    except sqlite3.DatabaseError as exc:
        problem = str(exc)
    aside = data_dir / f"{STUDIES_FILE}.damaged-{time.strftime('%Y%m%dT%H%M%S')}"
    for name in STUDY_FILES:
        if (data_dir / name).exists():
            (data_dir / name).replace(aside.with_name(aside.name + name.removeprefix(STUDIES_FILE)))
    log.warning("%s is damaged (%s): set aside as %s; the studies are rebuilt from the snapshot and log",
                path, problem, aside)
    return StudyDB(path)
