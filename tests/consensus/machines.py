"""Every replicated state machine of a node, on a :class:`ReplicatedState` fed by hand: entries
in, snapshots out, without a driver (for snapshot tests).

A :class:`Machine` has the node's real ``records``, ``journal`` and ``tokens`` registered in the
node's order, and the mesh's stateless barrier. A :class:`History` is one shared log: committing
appends an entry and applies it to one machine; the others apply the same entries later.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import uuid
from types import SimpleNamespace
from typing import Any

import optuna
from optuna.trial import TrialState

from nexus_node.cluster.tokens import ReplicatedTokens, TokenRecord
from nexus_node.consensus.raft import Entry
from nexus_node.consensus.state import Applied, ReplicatedState, encode_command
from nexus_node.jobs.events import EventHub
from nexus_node.jobs.records import JOB_STUDY_PREFIX, JobRecord, JobSpecRecord, ModelRecord
from nexus_node.jobs.registry import ReplicatedRecords
from nexus_node.net.roles import Role
from nexus_node.study.journal import DEFAULT_NAME, ReplicatedJournal
from nexus_node.study.replicated_storage import ReplicatedStorage


class Machine:
    """One node's state machines (see the module docstring)."""

    def __init__(self, node_id: str = "") -> None:
        self.recorded: list[tuple[str, str]] = []   # what the records told the driver
        self.driver = SimpleNamespace(state=ReplicatedState(), node_id=node_id or uuid.uuid4().hex, loop=None,
                                      note_recorded=lambda n, a: self.recorded.append((n, a)))
        self.state: ReplicatedState = self.driver.state
        self.hub = EventHub()
        self.records = ReplicatedRecords(self.driver, self.hub)   # type: ignore[arg-type]
        self.tokens = ReplicatedTokens(self.driver)   # type: ignore[arg-type]
        self.journal = ReplicatedJournal(self.driver)   # type: ignore[arg-type]
        self.state.register("barrier", lambda body, index: None)   # as the mesh does

    def apply(self, entries: list[Entry]) -> list[Applied]:
        return [self.state.apply(e) for e in entries]

    def restored(self) -> "Machine":
        """A fresh machine restored from this one's snapshot (items as JSON, as sent)."""
        other = Machine()
        other.state.restore(self.state.applied_index, as_sent(self.state.capture()()))
        return other

    def dump(self) -> dict[str, Any]:
        """Everything a user reads of this node's state (studies through Optuna's public API)."""
        return {
            "applied": self.state.applied_index,
            "jobs": {k: j.to_dict() for k, j in self.records.jobs.items()},
            "models": {k: m.to_dict() for k, m in self.records.models.items()},
            "blobs": {k: dataclasses.asdict(b) for k, b in self.records.blobs.items()},
            "addresses": dict(self.records.addresses),
            "tokens": [t.to_dict() for t in self.tokens.list()],
            "studies": studies(self.journal.storage()),
        }


def as_sent(items: Any) -> list[tuple[str, Any]]:
    """Items through JSON and back, as a snapshot file or stream carries them."""
    return [tuple(pair) for pair in json.loads(json.dumps(list(items)))]   # type: ignore[misc]


def studies(storage: optuna.storages.BaseStorage) -> dict[str, Any]:
    """Every study, trial for trial: ids, directions, attributes and FrozenTrials (numbers, ids,
    states, values, params, distributions, attributes, intermediate values, times)."""
    out = {}
    for s in storage.get_all_studies():
        sid = storage.get_study_id_from_name(s.study_name)
        out[s.study_name] = (sid, s.directions, storage.get_study_user_attrs(sid),
                             storage.get_study_system_attrs(sid), storage.get_all_trials(sid))
    return out


class History:
    """One committed log, applied by hand: :meth:`commit` appends an entry and applies it to
    ``machine``; :attr:`entries` replays on others. (Entries are numbered from the machine's
    applied index: ``History(restored)`` goes on from the snapshot.)"""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.entries: list[Entry] = []
        self.applied: list[Applied] = []   # each entry's outcome on ``machine``
        self.lock = threading.Lock()

    def commit(self, kind: str, body: Any, pid: str | None = None) -> Applied:
        index = self.machine.state.applied_index + 1
        entry = Entry(index, 1, data=encode_command(kind, body), proposal_id=pid or uuid.uuid4().hex)
        self.entries.append(entry)
        self.applied.append(self.machine.state.apply(entry))
        return self.applied[-1]

    def since(self, index: int) -> list[Entry]:
        """The entries after index ``index``."""
        return [e for e in self.entries if e.index > index]

    def optuna(self, name: str = DEFAULT_NAME) -> ReplicatedStorage:
        """The machine's Optuna storage, whose writes commit here as journal commands."""
        return ReplicatedStorage(_Committing(self), name)   # type: ignore[arg-type]


class _Committing:
    """What ReplicatedStorage uses of a ReplicatedJournal, committing through a History (one
    command at a time, from any thread)."""

    def __init__(self, history: History) -> None:
        journal = history.machine.journal
        self.history, self.db, self.writer_prefix, self.driver = history, journal.db, journal.writer_prefix, journal.driver

    def write(self, name: str, logs: list[dict[str, Any]], timeout: float | None = None) -> list[Any]:
        with self.history.lock:
            applied = self.history.commit("optuna_journal", {"name": name, "logs": logs})
            return self.history.machine.journal._outcomes.pop(applied.index)


def local_storage(name: str = DEFAULT_NAME) -> tuple[ReplicatedStorage, History]:
    """A node's storage on one machine whose log is committed by hand (no cluster): each write
    is one entry of the returned history."""
    history = History(Machine())
    return history.optuna(name), history


def journal_commands(history: History) -> list[list[dict[str, Any]]]:
    """The logs of each journal command committed to ``history``, in order."""
    out = []
    for entry in history.entries:
        command = json.loads(entry.data)
        if command["kind"] == "optuna_journal":
            out.append(command["body"]["logs"])
    return out


def job(job_id: str, state: str = "PENDING", **kw: Any) -> dict[str, Any]:
    return {"op": "put_job", "job": JobRecord(job_id=job_id, spec=JobSpecRecord(target="y"), created_at=1.0,
                                              state=state, study_name=JOB_STUDY_PREFIX + job_id, **kw).to_dict()}


def model(model_id: str, job_id: str) -> dict[str, Any]:
    return {"op": "put_model", "model": ModelRecord(model_id, job_id, "regression", "y", ["a"], [], {"r2": 0.9},
                                                    "0" * 64, 10, 2.0).to_dict()}


def blob(sha: str, holder: str, job_id: str = "") -> dict[str, Any]:
    body = {"op": "put_blob", "sha256": sha * 32, "size": 5, "kind": "dataset", "holder": holder}
    return body | ({"job_id": job_id} if job_id else {})


def token(name: str, digit: str) -> dict[str, Any]:
    return {"op": "put_token", "token": TokenRecord(name, Role.READ, digit * 64, 3.0).to_dict()}


def populate(history: History) -> None:
    """A history that touches every state machine and every kind of write: jobs in every
    state (one cancelled, one deleted), models (one deleted), blobs held by two nodes (one
    dropped by its last holder), member addresses, tokens (one revoked), and studies written
    by plain Optuna with every trial state, attributes, intermediate values, a deleted study
    and a second journal."""
    c = history.commit
    c("records", job("a", "SEARCHING"))
    c("records", job("b", "COMPLETED"))
    c("records", job("gone", "FAILED"))
    c("records", job("c", "SEARCHING"))
    c("records", {"op": "cancel_job", "job_id": "c"})
    c("records", {"op": "delete_job", "job_id": "gone"})
    c("records", model("m1", "b"))
    c("records", model("m2", "b"))
    c("records", {"op": "delete_model", "model_id": "m2"})
    c("records", blob("ab", "n1", "a"))
    c("records", blob("ab", "n2", "a"))
    c("records", blob("cd", "n1"))
    c("records", {"op": "drop_blob", "sha256": "cd" * 32, "holder": "n1"})
    c("records", {"op": "member", "node_id": "n1", "address": "10.0.0.1:7000"})
    c("records", {"op": "member", "node_id": "n2", "address": "10.0.0.2:7000"})
    c("tokens", token("reader", "1"))
    c("tokens", token("old", "2"))
    c("tokens", {"op": "revoke_token", "name": "old"})
    c("barrier", {})

    storage = history.optuna()
    first = optuna.create_study(study_name=JOB_STUDY_PREFIX + "a", storage=storage, direction="maximize")
    first.set_user_attr("owner", "ana")
    storage.set_study_system_attr(first._study_id, "nexus:kind", "job")
    for i in range(5):
        t = first.ask({"x": optuna.distributions.FloatDistribution(0, 1),
                       "family": optuna.distributions.CategoricalDistribution(["mlp", "gbt"])})
        for step in range(3):
            t.report(0.1 * step + i, step)
        t.set_user_attr("epochs", 3 + i)
        if i < 3:
            first.tell(t, [0.5, None, None][i], state=[TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL][i])
        # 3 and 4 stay RUNNING
    first.enqueue_trial({"x": 0.25, "family": "gbt"}, user_attrs={"retry_of": 2})   # WAITING
    doomed = optuna.create_study(study_name="doomed", storage=storage)
    doomed.optimize(lambda t: t.suggest_int("k", 1, 9), n_trials=2)
    optuna.delete_study(study_name="doomed", storage=storage)
    multi = optuna.create_study(study_name="multi", storage=storage, directions=["minimize", "maximize"])
    multi.optimize(lambda t: (t.suggest_float("a", -1, 1), t.suggest_float("b", -1, 1)), n_trials=2)
    other = history.optuna("second")
    optuna.create_study(study_name="elsewhere", storage=other).optimize(lambda t: t.suggest_float("z", 0, 1), 2)


def more(history: History) -> None:
    """Writes after a snapshot: on records that exist (a cancel, a second holder, a new
    address) and new ones, tokens, and every study (finishing RUNNING trials, a new trial,
    the WAITING one taken, a new study)."""
    c = history.commit
    c("records", {"op": "cancel_job", "job_id": "a"})
    c("records", job("a", "CANCELLED"))
    c("records", job("d"))
    c("records", blob("ab", "n3", "a"))
    c("records", {"op": "drop_blob", "sha256": "ab" * 32, "holder": "n1"})
    c("records", {"op": "member", "node_id": "n1", "address": "10.0.0.9:7000"})
    c("tokens", {"op": "revoke_token", "name": "reader"})
    c("tokens", token("new", "3"))
    storage = history.optuna()
    sid = storage.get_study_id_from_name(JOB_STUDY_PREFIX + "a")
    running = [t for t in storage.get_all_trials(sid) if t.state == TrialState.RUNNING]
    for t in running:
        tid = storage.get_trial_id_from_study_id_trial_number(sid, t.number)
        storage.set_trial_intermediate_value(tid, 7, 0.7)
        storage.set_trial_state_values(tid, TrialState.COMPLETE, [0.9])
    first = optuna.load_study(study_name=JOB_STUDY_PREFIX + "a", storage=storage)
    first.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)   # the WAITING trial first
    optuna.create_study(study_name="later", storage=storage).optimize(lambda t: t.suggest_int("k", 0, 3), 1)
