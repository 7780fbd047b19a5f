"""The replicated Optuna journal: every node's storage reads its own study tables, which every
node fills from one committed history."""

from __future__ import annotations

import asyncio
import pickle

import optuna
import pytest
from optuna.study import StudyDirection
from optuna.trial import TrialState

from nexus_node.study.replicated_storage import ReplicatedStorage
from tests.consensus.driver_cluster import MeshCluster
from tests.consensus.machines import studies


@pytest.fixture
async def cluster(tmp_path):
    c = await MeshCluster(tmp_path).start()
    await c.leader()
    yield c
    await c.stop()


async def test_each_node_reads_its_own_writes_and_everyone_elses(cluster):
    a, b, c = cluster.nodes
    sa, sb = a.journal.storage(), b.journal.storage()

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
    # Every node ends with the same studies, c included (it only applied, never wrote); a may
    # not have applied b's write yet: wait for it.
    for n in (a, c):
        await n.driver.wait_for(lambda n=n: n.journal.db.applied == b.journal.db.applied, 10.0)
    seen = [await asyncio.to_thread(studies, n.journal.storage()) for n in cluster.nodes]
    assert seen[0] == seen[1] == seen[2] and len(seen[0]["shared"][4]) == 2
    # Journals are independent by name.
    assert c.journal.storage("other").get_all_studies() == []


async def test_a_write_on_the_loop_thread_is_refused(cluster):
    storage = cluster.nodes[0].journal.storage()
    with pytest.raises(RuntimeError, match="another thread"):
        storage.create_new_study([StudyDirection.MINIMIZE], "on-the-loop")


async def test_a_refused_write_raises_only_to_its_writer(cluster):
    """As Optuna's journal: a study name in use is DuplicatedStudyError for the writer, and the
    command changes nothing on any node."""
    a, b, _ = cluster.nodes
    await asyncio.to_thread(a.journal.storage().create_new_study, [StudyDirection.MINIMIZE], "taken")
    with pytest.raises(optuna.exceptions.DuplicatedStudyError):
        await asyncio.to_thread(b.journal.storage().create_new_study, [StudyDirection.MAXIMIZE], "taken")
    assert [s.directions for s in a.journal.storage().get_all_studies()] == [[StudyDirection.MINIMIZE]]


async def test_a_pickled_storage_finds_its_node_again(cluster):
    storage = cluster.nodes[1].journal.storage("p")
    sid = await asyncio.to_thread(storage.create_new_study, [StudyDirection.MINIMIZE], "p-study")
    restored: ReplicatedStorage = pickle.loads(pickle.dumps(storage))
    assert restored.get_study_name_from_id(sid) == "p-study"
    # Another process (here: a node id not running) cannot use it.
    state = storage.__getstate__() | {"node_id": "elsewhere"}
    with pytest.raises(RuntimeError, match="does not run in this process"):
        ReplicatedStorage.__new__(ReplicatedStorage).__setstate__(state)


async def test_the_tables_survive_a_restart_and_no_entry_is_applied_twice(cluster):
    node = cluster.nodes[0]
    storage = node.journal.storage()

    def write() -> int:
        sid = storage.create_new_study([StudyDirection.MAXIMIZE], "kept")
        tid = storage.create_new_trial(sid)
        storage.set_trial_intermediate_value(tid, 1, 0.5)
        return tid

    tid = await asyncio.to_thread(write)
    before = await asyncio.to_thread(studies, storage)
    applied = node.journal.db.applied
    await node.stop()
    await node.restart(cluster.peers_of(node), cluster.voters)
    # The tables come back as they were, at the index they held: the log replayed at start
    # applies nothing to them again (a trial created twice would get another id).
    assert node.journal.db.applied >= applied
    again = node.journal.storage()
    assert await asyncio.to_thread(studies, again) == before
    await asyncio.to_thread(again.set_trial_state_values, tid, TrialState.COMPLETE, [2.0])
    assert again.get_trial(tid).values == [2.0] and again.get_trial(tid).number == 0


async def test_tables_of_another_history_are_replaced_from_the_log(cluster, tmp_path):
    """A node restarted without its study tables rebuilds them from its log."""
    node = cluster.nodes[2]
    storage = node.journal.storage()
    await asyncio.to_thread(storage.create_new_study, [StudyDirection.MAXIMIZE], "rebuilt")
    await node.stop()
    for name in ("studies.db", "studies.db-wal", "studies.db-shm"):
        (node.data_dir / name).unlink(missing_ok=True)
    await node.restart(cluster.peers_of(node), cluster.voters)
    await node.driver.wait_for(lambda: bool(node.journal.storage().get_all_studies()), 10.0)
    assert [s.study_name for s in node.journal.storage().get_all_studies()] == ["rebuilt"]
