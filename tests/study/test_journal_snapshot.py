"""The journal in a snapshot, and a node's Optuna storages across a restore (issue 23)."""

from __future__ import annotations

import asyncio
import json

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.trial import TrialState

from nexus_node.consensus.driver import MeshSettings, RaftDriver
from nexus_node.jobs.records import JOB_STUDY_PREFIX
from nexus_node.study import journal as journal_module
from nexus_node.study.journal import JournalReplaced, ReplicatedJournal
from nexus_node.study.storages import StudyStorages
from tests.consensus.machines import History, Machine, as_sent, populate, studies

FAST = MeshSettings(tick_interval=0.02, propose_timeout=10.0)
STUDY = JOB_STUDY_PREFIX + "a"


def test_a_long_journal_is_split_into_items_and_put_together_by_name(monkeypatch):
    monkeypatch.setattr(journal_module, "SNAPSHOT_ITEM_LOGS", 4)
    node = Machine()
    populate(History(node))
    items = as_sent(node.state.capture()())
    logs = [item for kind, item in items if kind == "optuna_journal"]
    assert max(len(i["logs"]) for i in logs) == 4 and len({i["name"] for i in logs}) == 2 < len(logs)
    copy = Machine()
    copy.state.restore(node.state.applied_index, items)
    assert copy.dump()["studies"] == node.dump()["studies"]
    second = JournalStorage(copy.journal.backend("second"))
    assert [s.study_name for s in second.get_all_studies()] == ["elsewhere"]


@pytest.fixture
async def node(tmp_path):
    driver = RaftDriver("n1", "test", tmp_path / "raft.db", "127.0.0.1:1", {}, settings=FAST)
    journal = ReplicatedJournal(driver)
    await driver.start(["n1"])
    await driver.wait_for(lambda: driver.is_leader, 10)
    yield driver, journal
    await driver.stop()


async def test_storages_used_before_a_restore_follow_it_and_writes_after_it_land(node):
    driver, journal = node
    storages = StudyStorages(journal)
    # The cluster's history; this node applied its start and then fell behind.
    source = Machine()
    history = History(source)
    populate(history)
    for entry in history.entries:
        command = json.loads(entry.data)
        if command["kind"] == "optuna_journal":
            await journal.append(command["body"]["name"], command["body"]["logs"])

    def before() -> tuple[int, dict[int, int]]:
        reads = storages.reads
        sid = reads.get_study_id_from_name(STUDY)
        running = {t.number: reads.get_trial_id_from_study_id_trial_number(sid, t.number)
                   for t in reads.get_all_trials(sid) if t.state == TrialState.RUNNING}
        storages.writes.get_all_studies()
        return sid, running

    sid, running = await asyncio.to_thread(before)
    assert len(running) == 2
    old_reads, old_writes = storages.reads, storages.writes
    # The cluster goes on without it: one running trial ends, a study is added.
    src = history.optuna()
    first_running = min(running.values())
    src.set_trial_intermediate_value(first_running, 9, 0.8)
    src.set_trial_state_values(first_running, TrialState.COMPLETE, [0.8])
    optuna.create_study(study_name="later", storage=src).optimize(lambda t: t.suggest_int("k", 0, 3), n_trials=2)
    # Its snapshot reaches this node, which restores it between two applies, as the driver
    # does (here at this node's own index: the driver's part is not under test).
    items = [(kind, item) for kind, item in as_sent(source.state.capture()()) if kind == "optuna_journal"]
    driver.state.restore(driver.state.applied_index, [("state", {"applied_index": driver.state.applied_index,
                                                                 "seen": []}), *items])
    expected = studies(JournalStorage(source.journal.backend()))
    steps_before = JournalStorage(source.journal.backend()).get_trial(max(running.values())).intermediate_values
    assert len(steps_before) == 3

    def after() -> tuple[int, int]:
        # The holder gives storages on the new journal; the old ones refuse rather than answer
        # from a journal that is gone.
        assert studies(storages.reads) == expected
        assert studies(storages.writes) == expected
        with pytest.raises(JournalReplaced, match="replaced by a snapshot"):
            old_reads.get_all_studies()
        with pytest.raises(JournalReplaced):
            old_writes.set_trial_user_attr(max(running.values()), "lost", True)
        # A runner that held a trial id from before goes on with it, and a new trial gets the
        # id every node gives it.
        last_running = max(running.values())
        writes = storages.writes
        assert writes.get_study_id_from_name(STUDY) == sid
        writes.set_trial_intermediate_value(last_running, 5, 0.5)
        writes.set_trial_state_values(last_running, TrialState.COMPLETE, [0.7])
        return last_running, writes.create_new_trial(sid)

    last_running, new_trial = await asyncio.to_thread(after)
    assert new_trial == src.create_new_trial(sid)   # the cluster's next trial id, here as there
    reread = JournalStorage(journal.backend())     # what any later storage of this node reads
    for storage in (reread, storages.reads):
        trial = storage.get_trial(last_running)
        assert (trial.state, trial.values, trial.intermediate_values[5]) == (TrialState.COMPLETE, [0.7], 0.5)
        assert trial.intermediate_values == {**steps_before, 5: 0.5}
        assert storage.get_trial(first_running).values == [0.8]
    assert set(studies(reread)) == {STUDY, "multi", "later"}
    assert len(journal) < sum(len(json.loads(e.data)["body"]["logs"]) for e in history.entries
                              if json.loads(e.data)["kind"] == "optuna_journal")
