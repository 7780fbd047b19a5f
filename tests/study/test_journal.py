"""The replicated Optuna journal: per-node JournalStorages sharing one committed history."""

from __future__ import annotations

import asyncio
import pickle

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState

from nexus_node.study.journal import ReplicatedJournalBackend
from tests.consensus.driver_cluster import MeshCluster


@pytest.fixture
async def cluster(tmp_path):
    c = await MeshCluster(tmp_path).start()
    await c.leader()
    yield c
    await c.stop()


async def test_each_node_reads_its_own_writes_and_everyone_elses(cluster):
    a, b, c = cluster.nodes
    sa = await asyncio.to_thread(JournalStorage, a.journal.backend())
    sb = await asyncio.to_thread(JournalStorage, b.journal.backend())

    def on_a() -> tuple[int, int]:
        study = sa.create_new_study([StudyDirection.MINIMIZE], "shared")
        trial = sa.create_new_trial(study)
        sa.set_trial_param(trial, "x", 0.5, optuna.distributions.FloatDistribution(0, 1))
        sa.set_trial_state_values(trial, TrialState.COMPLETE, [1.5])
        return study, trial

    study, trial = await asyncio.to_thread(on_a)

    def on_b() -> None:
        # A write through b returns only once b has applied it, and a's writes were committed
        # before it, so b now sees them too (read-your-writes + log order).
        other = sb.create_new_trial(study)
        assert sb.get_trial(trial).params == {"x": 0.5}
        assert sb.get_trial(trial).values == [1.5]
        assert [t.number for t in sb.get_all_trials(study)] == [0, 1]
        assert sb.get_trial(other).state == TrialState.RUNNING

    await asyncio.to_thread(on_b)
    # Every node ends with the same journal, c included (it only applied, never wrote); a may
    # not have applied b's write yet: wait for it.
    for n in (a, c):
        await n.driver.wait_for(lambda n=n: len(n.journal) == len(b.journal), 10.0)
    logs = [n.journal.read("optuna", 0) for n in cluster.nodes]
    assert logs[0] == logs[1] == logs[2] and len(logs[0]) == 5
    # Journals are independent by name.
    assert c.journal.read("other", 0) == []


async def test_append_logs_on_the_loop_thread_is_refused(cluster):
    backend = cluster.nodes[0].journal.backend()
    with pytest.raises(RuntimeError, match="another thread"):
        backend.append_logs([{"op_code": 0}])


async def test_a_pickled_backend_finds_its_node_again(cluster):
    backend = cluster.nodes[1].journal.backend("p")
    log = {"op_code": 2, "worker_id": "w", "study_id": 0, "user_attr": {"k": 1}}
    await asyncio.to_thread(backend.append_logs, [log])
    restored: ReplicatedJournalBackend = pickle.loads(pickle.dumps(backend))
    assert list(restored.read_logs(0)) == [log]
    # Another process (here: a node id not running) cannot use it.
    state = backend.__getstate__() | {"node_id": "elsewhere"}
    with pytest.raises(RuntimeError, match="does not run in this process"):
        ReplicatedJournalBackend.__new__(ReplicatedJournalBackend).__setstate__(state)


async def test_journal_is_rebuilt_from_the_log_after_a_restart(cluster):
    node = cluster.nodes[0]
    storage = await asyncio.to_thread(JournalStorage, node.journal.backend())
    await asyncio.to_thread(storage.create_new_study, [StudyDirection.MAXIMIZE], "kept")
    before = node.journal.read("optuna", 0)
    await node.stop()
    await node.restart(cluster.peers_of(node), cluster.voters)
    await node.driver.wait_for(lambda: len(node.journal) >= len(before), 10.0)
    again = await asyncio.to_thread(JournalStorage, node.journal.backend())
    assert await asyncio.to_thread(again.get_study_id_from_name, "kept") is not None
    assert node.journal.read("optuna", 0) == before
