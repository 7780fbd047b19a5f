"""Through a node, a trial's epochs reach the study in a few journal writes, not one each,
the trial's end (last epochs, attributes, state) is one write, and the study still has
every epoch."""

from __future__ import annotations

import json
import sqlite3

import optuna

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node.study.proxy import NexusStorageProxy
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
    everything = study.get_trials()
    trials = [t for t in everything if t.state == optuna.trial.TrialState.COMPLETE]
    assert trials
    steps = 0
    for t in trials:   # every epoch a trial ran is in the study, in order
        ran = max(t.intermediate_values) + 1
        assert sorted(t.intermediate_values) == list(range(ran)) and ran >= 10
        steps += ran
    node.stop()
    with sqlite3.connect(node.data_dir / "raft.db") as db:
        entries = [bytes(data) for (data,) in db.execute("SELECT data FROM raft_log")]
    writes = sum(1 for data in entries if b"intermediate_value" in data)
    assert 0 < writes <= steps / 3, (writes, steps)
    # Each trial's end: its epochs attribute and its state in the same entry, once.
    journal = [json.loads(data)["body"]["logs"] for data in entries if data.startswith(b'{"kind":"optuna_journal"')]
    ends = [ops for ops in journal if any("epochs" in op.get("user_attr", {}) for op in ops)]
    assert len(ends) == len(everything), len(ends)
    for ops in ends:
        assert ops[-1].get("datetime_complete") and ops[-1]["trial_id"] == ops[0]["trial_id"], ops
