"""Through a node, a trial's epochs reach the study in a few journal writes, not one each,
and the study still has every epoch."""

from __future__ import annotations

import sqlite3

import optuna

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node.study_proxy import NexusStorageProxy
from tests.node.helpers import stub, submit, watch_until_end

EPOCHS = 60


def test_a_trial_s_epochs_are_written_in_batches(node_factory, insurance_csv):
    node = node_factory("batches", "--slots", "1", "--pruner", "none").start()
    s = stub(node.address)
    job, _ = watch_until_end(s, submit(
        s, insurance_csv, "charges", max_trials=3,
        constraints_json=f'{{"families": ["mlp"], "min_epochs": {EPOCHS}, "max_epochs": {EPOCHS}, "widths": [32]}}').job_id)
    assert job.state == pb.COMPLETED, job.message

    host, port = node.address.rsplit(":", 1)
    study = optuna.load_study(study_name=job.study_name, storage=NexusStorageProxy(host=host, port=int(port)))
    trials = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert trials
    steps = 0
    for t in trials:   # every epoch a trial ran is in the study, in order
        ran = max(t.intermediate_values) + 1
        assert sorted(t.intermediate_values) == list(range(ran)) and ran >= 10
        steps += ran
    node.stop()
    with sqlite3.connect(node.data_dir / "raft.db") as db:
        writes = sum(1 for (data,) in db.execute("SELECT data FROM raft_log") if b"intermediate_value" in bytes(data))
    assert 0 < writes <= steps / 3, (writes, steps)
