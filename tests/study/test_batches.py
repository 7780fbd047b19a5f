"""Storage batches (study/replicated_storage.py): several storage writes as one journal command,
refused once as a whole, on a node's storage whose log is committed by hand (no cluster)."""

from __future__ import annotations

import threading

import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.study import StudyDirection
from optuna.trial import TrialState

from nexus_node.study.ops import Op
from tests.consensus.machines import History, journal_commands, local_storage


@pytest.fixture
def journal():
    storage, history = local_storage()
    trial_id = storage.create_new_trial(storage.create_new_study([StudyDirection.MAXIMIZE], "s"))
    return storage, history, trial_id


def test_a_batch_is_one_command_read_back_by_its_last_write(journal):
    storage, history, trial_id = journal
    before = len(journal_commands(history))
    with storage.batch() as batch:
        storage.set_trial_intermediate_value(trial_id, 0, 0.5)
        storage.set_trial_user_attr(trial_id, "epochs", 1)
        assert len(journal_commands(history)) == before   # held: nothing written yet
        assert storage.get_trial(trial_id).user_attrs == {}
        batch.last()
        storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.5])
    commands = journal_commands(history)
    assert len(commands) == before + 1
    assert [log["op_code"] for log in commands[-1]] == [
        Op.SET_TRIAL_INTERMEDIATE_VALUE, Op.SET_TRIAL_USER_ATTR, Op.SET_TRIAL_STATE_VALUES]
    t = storage.get_trial(trial_id)
    assert (t.state, t.values, t.intermediate_values, t.user_attrs) == (
        TrialState.COMPLETE, [0.5], {0: 0.5}, {"epochs": 1})
    # Another node, applying the same entries, holds the same trial.
    other = History(type(history.machine)())
    other.machine.apply(history.entries)
    assert other.machine.journal.storage().get_trial(trial_id) == t


def test_other_threads_write_as_usual_while_a_batch_is_open(journal):
    storage, history, trial_id = journal
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
    assert [len(c) for c in journal_commands(history)[-2:]] == [1, 2]


def test_a_batch_that_ends_without_its_last_write_writes_nothing(journal):
    storage, history, trial_id = journal
    before = len(history.entries)
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
    assert len(history.entries) == before
    storage.set_trial_user_attr(trial_id, "after", 2)   # the thread writes as usual again
    assert storage.get_trial(trial_id).user_attrs == {"after": 2}


def test_a_batch_on_a_trial_finished_meanwhile_raises_once_and_applies_none_of_it(journal):
    storage, history, trial_id = journal
    elsewhere = history.optuna()   # another writer of the same log
    with pytest.raises(UpdateFinishedTrialError):
        with storage.batch() as batch:
            storage.set_trial_system_attr(trial_id, "fail_reason", "lost")
            storage.set_trial_system_attr(trial_id, "nexus:lost", True)
            elsewhere.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.9])
            batch.last()
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
    t = storage.get_trial(trial_id)
    assert (t.state, t.values, t.system_attrs) == (TrialState.COMPLETE, [0.9], {})
    # Nothing of it raises again in a later, unrelated call.
    storage.set_trial_user_attr(storage.create_new_trial(storage.get_study_id_from_name("s")), "k", 1)
