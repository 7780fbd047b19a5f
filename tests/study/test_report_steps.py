"""Several intermediate values of a trial in one journal append (what ReportSteps runs)."""

from __future__ import annotations

import pytest
from optuna.study import StudyDirection
from optuna.trial import TrialState

from nexus_node.errors import FailedPrecondition, InvalidInput, NotFound
from nexus_node.study.ops import Op
from nexus_node.study.studies import report_steps
from tests.consensus.machines import History, journal_commands, local_storage


class Counts:
    """Journal commands committed to a history: all of them, and those with parameters."""

    def __init__(self, history: History) -> None:
        self.history = history

    @property
    def appends(self) -> int:
        return len(journal_commands(self.history))

    @property
    def param_appends(self) -> int:
        return sum(any(log["op_code"] == Op.SET_TRIAL_PARAM for log in c) for c in journal_commands(self.history))


@pytest.fixture
def storage_and_backend():
    storage, history = local_storage()
    return storage, Counts(history)


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


def _space(t):
    return {"lr": t.suggest_float("lr", 1e-4, 1e-1, log=True), "width": t.suggest_categorical("width", [32, 64, 128]),
            "layers": t.suggest_int("layers", 1, 4)}


def test_a_trial_s_parameters_and_attributes_land_in_one_append_and_draw_the_same(tmp_path):
    import optuna

    from nexus_node.study.studies import suggest_in_one_write

    draws = []
    for held in (False, True):
        storage, history = local_storage()
        backend = Counts(history)
        study = optuna.create_study(storage=storage, sampler=optuna.samplers.TPESampler(
            seed=3, n_startup_trials=2, constant_liar=True), direction="maximize")
        for _ in range(4):
            trial = study.ask()
            before = backend.param_appends
            if held:
                # (TPE writes its own system attribute when it samples; that write is not held.)
                params = suggest_in_one_write(storage, trial, _space,
                                              lambda p: {"nexus:config": p, "nexus:node": "n1"})
                assert backend.param_appends == before + 1
            else:
                params = _space(trial)
            study.tell(trial, params["lr"] * params["layers"])
            draws.append(params)
        stored = study.trials[-1]
        assert stored.params == draws[-1]
        if held:
            assert stored.user_attrs == {"nexus:config": draws[-1], "nexus:node": "n1"}
    assert draws[:4] == draws[4:]   # the sampler drew exactly what it draws writing each param


def test_held_writes_of_a_finished_trial_are_refused(tmp_path):
    import optuna

    from nexus_node.study.studies import suggest_in_one_write

    storage, history = local_storage()
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name),
                                                               trial.number)
    storage.set_trial_state_values(trial_id, TrialState.FAIL)
    with pytest.raises(FailedPrecondition):
        suggest_in_one_write(storage, trial, _space, lambda p: {"nexus:node": "n1"})
    storage.get_trial(trial_id)   # this thread's next call raises nothing
    replayed = history.machine.journal.storage().get_trial(trial_id)
    assert replayed.state is TrialState.FAIL and replayed.params == {} and replayed.user_attrs == {}
    with pytest.raises(ValueError, match="at least one"):
        suggest_in_one_write(storage, study.ask(), _space, lambda p: {})


def test_a_batch_on_a_trial_finished_meanwhile_is_refused_once_and_leaves_nothing_behind(tmp_path):
    """Another writer (another node) finishes the trial between the check and the append: the
    whole batch is refused, and no op of it raises again in a later, unrelated call of this
    storage."""
    from nexus_node.study.studies import FAIL_REASON, LOST_ATTR, fail_trial

    mine, history = local_storage()
    other = history.optuna()
    study_id = mine.create_new_study([StudyDirection.MAXIMIZE], "s")
    trial = mine.create_new_trial(study_id)

    real_get = mine.get_trial
    def finished_right_after_the_check(trial_id):  # type: ignore[no-untyped-def]
        frozen = real_get(trial_id)
        other.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.9])
        return frozen
    mine.get_trial = finished_right_after_the_check  # type: ignore[method-assign]
    assert fail_trial(mine, trial, "its node died", lost=True) is False
    mine.get_trial = real_get  # type: ignore[method-assign]

    again = mine.get_trial(trial)   # would raise UpdateFinishedTrialError for each op left
    assert again.state is TrialState.COMPLETE and again.values == [0.9]
    assert FAIL_REASON not in again.system_attrs and LOST_ATTR not in again.system_attrs
    mine.create_new_trial(study_id)  # and so would any other call
    # On a trial still running, the reason, the lost mark and the state land together.
    running = mine.create_new_trial(study_id)
    assert fail_trial(mine, running, "its node died", lost=True) is True
    failed = other.get_trial(running)
    assert failed.state is TrialState.FAIL and failed.system_attrs[LOST_ATTR] is True
    assert failed.system_attrs[FAIL_REASON] == "its node died" and failed.datetime_complete is not None


def test_a_trial_s_end_is_one_append_as_tell_would_record_it(storage_and_backend):
    from nexus_node.study.studies import finish_trial

    storage, backend = storage_and_backend
    study = storage.create_new_study([StudyDirection.MAXIMIZE], "s")
    done = storage.create_new_trial(study)
    report_steps(storage, done, [(0, 0.5)])
    before = backend.appends
    assert finish_trial(storage, done, [(0, 0.1), (1, 0.6)], {"epochs": 2}, "COMPLETE", 0.6) == ("COMPLETE", 0.6)
    assert backend.appends == before + 1
    t = storage.get_trial(done)
    assert (t.state, t.values, t.intermediate_values) == (TrialState.COMPLETE, [0.6], {0: 0.5, 1: 0.6})
    assert t.user_attrs == {"epochs": 2} and t.datetime_complete is not None
    # PRUNED: the last intermediate value (this call's included), as Study.tell records it.
    pruned = storage.create_new_trial(study)
    report_steps(storage, pruned, [(0, 0.3)])
    assert finish_trial(storage, pruned, [(1, 0.2)], {}, "PRUNED", None) == ("PRUNED", 0.2)
    assert storage.get_trial(pruned).values == [0.2]
    never = storage.create_new_trial(study)
    assert finish_trial(storage, never, [], {}, "PRUNED", None) == ("PRUNED", None)
    nan = storage.create_new_trial(study)
    assert finish_trial(storage, nan, [(0, float("nan"))], {}, "PRUNED", None) == ("PRUNED", None)
    failed = storage.create_new_trial(study)
    assert finish_trial(storage, failed, [], {"fail_reason": "diverged"}, "FAIL", 1.0) == ("FAIL", None)
    unbounded = storage.create_new_trial(study)   # as Study.tell, only NaN is not a value
    assert finish_trial(storage, unbounded, [], {}, "COMPLETE", float("inf")) == ("COMPLETE", float("inf"))
    assert storage.get_trial(failed).user_attrs["fail_reason"] == "diverged"


def test_a_bad_end_or_a_finished_trial_is_refused_and_records_nothing(storage_and_backend):
    import optuna

    from nexus_node.study.studies import finish_trial

    storage, backend = storage_and_backend
    study = storage.create_new_study([StudyDirection.MINIMIZE], "s")
    trial = storage.create_new_trial(study)
    before = backend.appends
    with pytest.raises(InvalidInput, match="RUNNING"):
        finish_trial(storage, trial, [], {}, "RUNNING", 1.0)
    with pytest.raises(InvalidInput, match="a number"):
        finish_trial(storage, trial, [], {}, "COMPLETE", float("nan"))
    with pytest.raises(InvalidInput, match="non-negative"):
        finish_trial(storage, trial, [(-1, 0.0)], {}, "COMPLETE", 1.0)
    with pytest.raises(NotFound):
        finish_trial(storage, 999, [], {}, "COMPLETE", 1.0)
    assert backend.appends == before
    waiting = storage.create_new_trial(study, template_trial=optuna.trial.create_trial(state=TrialState.WAITING))
    with pytest.raises(FailedPrecondition, match="WAITING"):
        finish_trial(storage, waiting, [], {}, "COMPLETE", 1.0)
    storage.set_trial_state_values(trial, TrialState.FAIL)
    with pytest.raises(FailedPrecondition, match="FAIL"):
        finish_trial(storage, trial, [(0, 1.0)], {"epochs": 1}, "COMPLETE", 1.0)
    t = storage.get_trial(trial)
    assert t.state is TrialState.FAIL and t.intermediate_values == {} and t.user_attrs == {}
