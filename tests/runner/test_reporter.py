"""The trial reporter: values reach the study in few writes, and the pruner judges a trial by
every value it reported, written yet or not."""

from __future__ import annotations

import time
from typing import Iterator

import optuna
import pytest
from optuna.storages import InMemoryStorage

from nexus_node.runner.tasks import _PipelinedReporter
from nexus_node.study.proxy import NexusStorageProxy
from nexus_node.study.studies import trial_id_of
from tests.storage_server import storage_server


class Recorder:
    """A ``write_steps`` that records each batch; ``nexus=False`` answers as plain Optuna does."""

    def __init__(self, nexus: bool = True) -> None:
        self.nexus = nexus
        self.batches: list[list[tuple[int, float]]] = []

    def __call__(self, trial_id: int, steps: list[tuple[int, float]]) -> bool:
        self.batches.append(list(steps))
        return self.nexus


@pytest.fixture
def storage() -> Iterator[NexusStorageProxy]:
    """The study behind a node's storage service, as a runner sees it: a trial read from it is a
    copy, so a value only the runner's Trial holds is not in the study (a local storage
    hands the Trial the study's own object)."""
    with storage_server(InMemoryStorage()) as port:
        proxy = NexusStorageProxy(host="127.0.0.1", port=port)
        yield proxy
        proxy.close()


def _asked(study: optuna.Study, storage: optuna.storages.BaseStorage) -> tuple[optuna.Trial, int]:
    """A new trial of ``study`` and its id in ``storage``."""
    trial = study.ask()
    return trial, trial_id_of(storage, study.study_name, trial.number)


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_values_held_between_writes_land_in_order_in_one_write_at_close():
    storage = InMemoryStorage()
    study = optuna.create_study(storage=storage, direction="maximize")
    _, trial_id = _asked(study, storage)
    rec = Recorder()
    reporter = _PipelinedReporter(study, storage, trial_id, warmup=1 << 30, write_steps=rec, write_interval=3600)
    for epoch in range(25):
        assert reporter(0.5 + epoch / 100, epoch) is False
    assert reporter.close() is None
    assert rec.batches == [[(e, 0.5 + e / 100) for e in range(25)]]


def test_the_pruner_sees_values_the_study_does_not_hold_yet(storage):
    study = optuna.create_study(storage=storage, direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    good = study.ask()
    for step in range(40):
        good.report(0.99, step)
    study.tell(good, 0.99)
    _, trial_id = _asked(study, storage)
    rec = Recorder()
    reporter = _PipelinedReporter(study, storage, trial_id, warmup=0, write_steps=rec, write_interval=3600)
    for epoch in range(5):
        reporter(0.1, epoch)
    _wait_for(reporter.pruned)
    assert rec.batches == []   # judged before anything was written
    assert storage.get_trial(trial_id).intermediate_values == {}
    assert reporter.close() is None
    assert [s for s, _ in rec.batches[0]] == list(range(5))


def test_a_server_without_report_steps_gets_every_value_through_trial_report(storage):
    study = optuna.create_study(storage=storage, direction="minimize")
    _, trial_id = _asked(study, storage)
    rec = Recorder(nexus=False)
    reporter = _PipelinedReporter(study, storage, trial_id, warmup=1 << 30, write_steps=rec, write_interval=0.0)
    for epoch in range(10):
        reporter(float(epoch), epoch)
    assert reporter.close() is None
    assert len(rec.batches) == 1   # asked once, then step by step
    assert storage.get_trial(trial_id).intermediate_values == {e: float(e) for e in range(10)}


def test_a_repeated_step_keeps_its_first_value():
    storage = InMemoryStorage()
    study = optuna.create_study(storage=storage)
    _, trial_id = _asked(study, storage)
    rec = Recorder()
    reporter = _PipelinedReporter(study, storage, trial_id, warmup=1 << 30, write_steps=rec, write_interval=3600)
    reporter(1.0, 0)
    reporter(2.0, 0)
    reporter(3.0, 1)
    reporter.close()
    assert rec.batches == [[(0, 1.0), (1, 3.0)]]
    assert reporter.values == {0: 1.0, 1: 3.0}


def test_with_no_interval_values_are_written_as_they_come():
    storage = InMemoryStorage()
    study = optuna.create_study(storage=storage)
    _, trial_id = _asked(study, storage)
    rec = Recorder()
    reporter = _PipelinedReporter(study, storage, trial_id, warmup=1 << 30, write_steps=rec, ask_interval=0.0, write_interval=0.0)
    reporter(1.0, 0)
    _wait_for(lambda: rec.batches)
    reporter(2.0, 1)
    reporter.close()
    assert [s for batch in rec.batches for s, _ in batch] == [0, 1] and len(rec.batches) == 2
