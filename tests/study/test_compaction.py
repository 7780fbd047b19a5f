"""A compacted Optuna journal replays to the same studies, trial for trial and id for id, from
about one operation per trial (issue 23: what a snapshot holds of the studies)."""

from __future__ import annotations

import json

import optuna
from optuna.storages import JournalStorage
from optuna.trial import TrialState

from nexus_node.study.compaction import ListBackend, compact, replay
from nexus_node.study.journal import validate_body
from tests.consensus.machines import studies


def _history() -> list[dict]:
    """A journal written by plain Optuna: three studies with every trial state, attributes and
    intermediate values, a study deleted with its trials, and its name used again."""
    backend = ListBackend()
    storage = JournalStorage(backend)
    first = optuna.create_study(study_name="first", storage=storage, direction="maximize")
    first.set_user_attr("owner", "ana")
    first_id = storage.get_study_id_from_name("first")
    storage.set_study_system_attr(first_id, "nexus:kind", "job")
    for i in range(6):
        t = first.ask({"x": optuna.distributions.FloatDistribution(0, 1),
                       "family": optuna.distributions.CategoricalDistribution(["mlp", "gbt"])})
        for step in range(5):
            t.report(0.1 * step + i, step)
        t.set_user_attr("epochs", 5 + i)
        storage.set_trial_system_attr(storage.get_trial_id_from_study_id_trial_number(first_id, t.number),
                                      "nexus:lost", i == 2)
        if i == 0:
            first.tell(t, 0.5)
        elif i == 1:
            first.tell(t, state=TrialState.PRUNED)
        elif i == 2:
            first.tell(t, state=TrialState.FAIL)
        elif i == 3:
            first.tell(t, float(i))
        # 4 and 5 stay RUNNING, with their steps so far
    first.enqueue_trial({"x": 0.25, "family": "gbt"}, user_attrs={"retry_of": 2})   # WAITING
    doomed = optuna.create_study(study_name="doomed", storage=storage)
    doomed.optimize(lambda t: t.suggest_int("k", 1, 9), n_trials=4)
    multi = optuna.create_study(study_name="multi", storage=storage, directions=["minimize", "maximize"])
    multi.optimize(lambda t: (t.suggest_float("a", -1, 1), t.suggest_float("b", -1, 1)), n_trials=3)
    optuna.delete_study(study_name="doomed", storage=storage)
    again = optuna.create_study(study_name="doomed", storage=storage)   # the name, free again
    again.optimize(lambda t: t.suggest_int("k", 1, 9), n_trials=2)
    first.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)   # after the deletion
    return json.loads(json.dumps(backend.logs))   # as the replicated log stores them


def test_a_compacted_journal_replays_to_the_same_studies_with_the_same_ids():
    logs = _history()
    short = compact(logs)
    before, after = studies(replay(logs)), studies(replay(short))
    assert before.keys() == {"first", "multi", "doomed"}
    # Each operation is one the replicated journal accepts as it accepts Optuna's own.
    validate_body({"name": "optuna", "logs": short})
    assert after == before   # FrozenTrial equality: ids, numbers, states, values, params,
    #                          distributions, attributes, intermediate values, datetimes
    trials = sum(len(v[4]) for v in before.values())
    # About one operation per trial: four creations (the deleted study's too), first's two
    # attributes, one per live trial, and the deleted study's four stubs and its deletion.
    assert len(short) == 4 + 2 + trials + 4 + 1 < len(logs) / 4, (len(short), len(logs))


def test_writes_after_compaction_land_on_the_same_trials():
    """The ids a restored node holds are the ones later writes name (a runner finishing its
    trial, a coordinator failing one)."""
    logs = _history()
    full_logs, short_logs = ListBackend(logs), ListBackend(compact(logs))
    full, short = JournalStorage(full_logs), JournalStorage(short_logs)
    sid = full.get_study_id_from_name("first")
    (number, *_) = [t.number for t in full.get_all_trials(sid) if t.state == TrialState.RUNNING]
    trial_id = full.get_trial_id_from_study_id_trial_number(sid, number)
    written = ListBackend(logs)   # the same journal, written on by one more worker
    writer = JournalStorage(written)
    writer.set_trial_intermediate_value(trial_id, 5, 1.5)
    writer.set_trial_state_values(trial_id, TrialState.COMPLETE, [2.0])
    writer.create_new_trial(writer.get_study_id_from_name("multi"))
    later = written.logs[len(logs):]
    full_logs.append_logs(later)
    short_logs.append_logs(later)
    assert studies(short) == studies(full)
    done = short.get_trial(trial_id)
    assert done.state == TrialState.COMPLETE and done.value == 2.0 and done.intermediate_values[5] == 1.5


def test_an_empty_journal_compacts_to_nothing():
    assert compact([]) == []
