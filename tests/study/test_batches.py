"""Journal batches (study/batches.py): several storage writes as one append of the backend,
refused once as a whole, on an in-memory journal backend (no cluster)."""

from __future__ import annotations

import threading
from typing import Any, Iterable

import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend
from optuna.study import StudyDirection
from optuna.trial import TrialState

from nexus_node.study.batches import FOLLOWER_SUFFIX, BatchedJournalStorage, as_one_append
from nexus_node.study.journal import Op


class ListBackend(BaseJournalBackend):
    """A journal in a list, remembering each append (what the replicated journal commits as one
    consensus round)."""

    def __init__(self) -> None:
        self.logs: list[dict[str, Any]] = []
        self.appends: list[list[dict[str, Any]]] = []
        self._lock = threading.Lock()

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        with self._lock:
            return [dict(log) for log in self.logs[log_number_from:]]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        with self._lock:
            self.appends.append([dict(log) for log in logs])
            self.logs.extend(dict(log) for log in logs)


@pytest.fixture
def journal() -> tuple[BatchedJournalStorage, ListBackend, int]:
    backend = ListBackend()
    storage = BatchedJournalStorage(backend)
    trial_id = storage.create_new_trial(storage.create_new_study([StudyDirection.MAXIMIZE], "s"))
    return storage, backend, trial_id


def test_the_first_log_keeps_its_writer_and_the_rest_are_marked_as_followers():
    logs = [{"op_code": Op.SET_TRIAL_USER_ATTR, "worker_id": "w-1"}, {"op_code": Op.SET_TRIAL_STATE_VALUES,
                                                                     "worker_id": "w-1"}]
    assert as_one_append(logs) == [logs[0], {**logs[1], "worker_id": "w-1" + FOLLOWER_SUFFIX}]
    assert as_one_append([]) == []


def test_a_batch_is_one_append_read_back_by_its_last_write(journal):
    storage, backend, trial_id = journal
    before = len(backend.appends)
    with storage.batch() as batch:
        storage.set_trial_intermediate_value(trial_id, 0, 0.5)
        storage.set_trial_user_attr(trial_id, "epochs", 1)
        assert len(backend.appends) == before   # held: nothing written yet
        assert storage.get_trial(trial_id).user_attrs == {}
        batch.last()
        storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.5])
    assert len(backend.appends) == before + 1
    ops = [log["op_code"] for log in backend.appends[-1]]
    assert ops == [Op.SET_TRIAL_INTERMEDIATE_VALUE, Op.SET_TRIAL_USER_ATTR, Op.SET_TRIAL_STATE_VALUES]
    t = storage.get_trial(trial_id)
    assert (t.state, t.values, t.intermediate_values, t.user_attrs) == (
        TrialState.COMPLETE, [0.5], {0: 0.5}, {"epochs": 1})
    # A plain storage on the same journal replays it the same way.
    assert JournalStorage(backend).get_trial(trial_id).user_attrs == {"epochs": 1}


def test_other_threads_write_as_usual_while_a_batch_is_open(journal):
    storage, backend, trial_id = journal
    other = storage.create_new_trial(storage.get_study_id_from_name("s"))
    with storage.batch() as batch:
        storage.set_trial_user_attr(trial_id, "mine", 1)
        writer = threading.Thread(target=storage.set_trial_user_attr, args=(other, "theirs", 2))
        writer.start()
        writer.join()
        assert storage.get_trial(other).user_attrs == {"theirs": 2}
        batch.last()
        storage.set_trial_user_attr(trial_id, "mine too", 3)
    assert storage.get_trial(trial_id).user_attrs == {"mine": 1, "mine too": 3}
    assert [len(a) for a in backend.appends[-2:]] == [1, 2]


def test_a_batch_that_ends_without_its_last_write_writes_nothing(journal):
    storage, backend, trial_id = journal
    before = len(backend.appends)
    with pytest.raises(RuntimeError, match="last()"):
        with storage.batch():
            storage.set_trial_user_attr(trial_id, "k", 1)
    with pytest.raises(KeyError):   # an error in the block drops what it held
        with storage.batch():
            storage.set_trial_user_attr(trial_id, "k", 1)
            storage.get_study_id_from_name("no such study")
    with pytest.raises(RuntimeError, match="nest"):
        with storage.batch(), storage.batch():
            pass
    assert len(backend.appends) == before
    storage.set_trial_user_attr(trial_id, "after", 2)   # the thread writes as usual again
    assert storage.get_trial(trial_id).user_attrs == {"after": 2}


def test_a_batch_on_a_trial_finished_meanwhile_raises_once_and_never_again(journal):
    storage, backend, trial_id = journal
    elsewhere = JournalStorage(backend)   # another node's writer
    with pytest.raises(UpdateFinishedTrialError):
        with storage.batch() as batch:
            storage.set_trial_system_attr(trial_id, "fail_reason", "lost")
            storage.set_trial_system_attr(trial_id, "nexus:lost", True)
            elsewhere.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.9])
            batch.last()
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
    # Every later call of this thread reads the rest of the batch without an error, and none
    # of it applied.
    t = storage.get_trial(trial_id)
    assert (t.state, t.values, t.system_attrs) == (TrialState.COMPLETE, [0.9], {})
    storage.set_trial_user_attr(storage.create_new_trial(storage.get_study_id_from_name("s")), "k", 1)
