"""A job's trial counts (study/studies.py): lost trials are counted apart, as failed ones
that do not use the budget."""

from __future__ import annotations

import optuna
from optuna.storages import InMemoryStorage

from nexus_node.study import studies


def test_a_trial_lost_with_its_node_counts_as_failed_and_lost():
    storage = InMemoryStorage()
    study = optuna.create_study(storage=storage)
    for lost in (True, False):
        number = study.ask().number
        assert studies.fail_trial(storage, studies.trial_id_of(storage, study.study_name, number),
                                  "node n2 died", lost=lost)
    study.tell(study.ask(), 1.0)
    study.ask()
    assert studies.counts(study.get_trials(deepcopy=False)) == {
        "COMPLETE": 1, "PRUNED": 0, "FAIL": 2, "RUNNING": 1, "WAITING": 0, "LOST": 1}
