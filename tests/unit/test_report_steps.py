"""Several intermediate values of a trial in one journal append (what ReportSteps runs)."""

from __future__ import annotations

import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.study import StudyDirection
from optuna.trial import TrialState

from nexus_node.errors import FailedPrecondition, InvalidInput, NotFound
from nexus_node.studies import report_steps


class CountingBackend(JournalFileBackend):
    appends = 0

    def append_logs(self, logs):  # type: ignore[no-untyped-def]
        self.appends += 1
        super().append_logs(logs)


@pytest.fixture
def storage_and_backend(tmp_path):
    backend = CountingBackend(str(tmp_path / "journal.log"))
    return JournalStorage(backend), backend


def test_steps_land_in_one_append_and_known_steps_are_skipped(storage_and_backend):
    storage, backend = storage_and_backend
    study = storage.create_new_study([StudyDirection.MAXIMIZE], "s")
    trial = storage.create_new_trial(study)
    before = backend.appends
    assert report_steps(storage, trial, [(0, 0.5), (1, 0.6), (1, 0.9), (2, 0.7)]) == 3
    assert backend.appends == before + 1
    assert storage.get_trial(trial).intermediate_values == {0: 0.5, 1: 0.6, 2: 0.7}
    # A step the trial has keeps its first value, as Trial.report keeps it.
    assert report_steps(storage, trial, [(2, 0.1), (3, 0.8)]) == 1
    assert storage.get_trial(trial).intermediate_values[2] == 0.7
    assert report_steps(storage, trial, [(3, 0.2)]) == 0 and backend.appends == before + 2


def test_bad_steps_unknown_and_finished_trials_are_refused(storage_and_backend):
    storage, _ = storage_and_backend
    trial = storage.create_new_trial(storage.create_new_study([StudyDirection.MINIMIZE], "s"))
    with pytest.raises(InvalidInput, match="non-negative"):
        report_steps(storage, trial, [(-1, 0.0)])
    with pytest.raises(NotFound):
        report_steps(storage, 999, [(0, 0.0)])
    storage.set_trial_state_values(trial, TrialState.COMPLETE, [1.0])
    with pytest.raises(FailedPrecondition, match="COMPLETE"):
        report_steps(storage, trial, [(0, 0.0)])
    assert storage.get_trial(trial).intermediate_values == {}


def test_user_attributes_land_in_one_append(storage_and_backend):
    from nexus_node.studies import set_user_attrs

    storage, backend = storage_and_backend
    trial = storage.create_new_trial(storage.create_new_study([StudyDirection.MAXIMIZE], "s"))
    before = backend.appends
    set_user_attrs(storage, trial, {"nexus:config": {"width": 64}, "nexus:node": "node-1"})
    assert backend.appends == before + 1
    assert storage.get_trial(trial).user_attrs == {"nexus:config": {"width": 64}, "nexus:node": "node-1"}
    storage.set_trial_state_values(trial, TrialState.FAIL)
    with pytest.raises(FailedPrecondition):
        set_user_attrs(storage, trial, {"late": 1})
