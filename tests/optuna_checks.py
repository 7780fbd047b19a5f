"""Checks shared by the suites that run Optuna's own storage tests against Nexus."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState


def assert_params_kept(storage: BaseStorage, param_names: list[str]) -> None:
    """Optuna's gRPC protocol carries a trial's params in a protobuf map, which keeps no order
    (Optuna's own proxy and server lose it too, so its `test_get_all_trials_params_order` says
    nothing about Nexus). What a client relies on is every param with its value and
    distribution."""
    study_id = storage.create_new_study(directions=[StudyDirection.MINIMIZE])
    trial_id = storage.create_new_trial(study_id, optuna.trial.create_trial(state=TrialState.RUNNING))
    for value, name in enumerate(param_names):
        storage.set_trial_param(trial_id, name, float(value), FloatDistribution(0.0, 2.0))
    (trial,) = storage.get_all_trials(study_id)
    assert trial.params == {name: float(value) for value, name in enumerate(param_names)}
    assert trial.distributions == {name: FloatDistribution(0.0, 2.0) for name in param_names}
