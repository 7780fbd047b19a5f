"""The study tables in a snapshot, and a node's Optuna storage across a restore (issue 23)."""

from __future__ import annotations

import asyncio
import json

import optuna
import pytest
from optuna.trial import TrialState

from nexus_node.consensus.driver import MeshSettings, RaftDriver
from nexus_node.jobs.records import JOB_STUDY_PREFIX
from nexus_node.study import study_db
from nexus_node.study.journal import ReplicatedJournal
from tests.consensus.machines import History, Machine, as_sent, populate, studies

FAST = MeshSettings(tick_interval=0.02, propose_timeout=10.0)
STUDY = JOB_STUDY_PREFIX + "a"


def test_each_trial_is_one_record_in_items_of_bounded_size_put_together_by_name(monkeypatch):
    monkeypatch.setattr(study_db, "SNAPSHOT_ITEM_TRIALS", 4)
    node = Machine()
    history = History(node)
    populate(history)
    writes = sum(len(json.loads(e.data)["body"]["logs"]) for e in history.entries
                 if json.loads(e.data)["kind"] == "optuna_journal")
    items = as_sent(node.state.capture()())
    journal = [item for kind, item in items if kind == "optuna_journal"]
    trials = [t for item in journal if "trials" in item for t in item["trials"]]
    assert max(len(i["trials"]) for i in journal if "trials" in i) == 4
    # One record per trial that exists (the deleted study's are gone), not one per write.
    held = sum(len(s[4]) for name in ("optuna", "second") for s in studies(node.journal.storage(name)).values())
    assert len(trials) == held < writes
    assert {i["name"] for i in journal} == {"optuna", "second"}
    copy = Machine()
    copy.state.restore(node.state.applied_index, items)
    assert copy.dump()["studies"] == node.dump()["studies"]
    assert [s.study_name for s in copy.journal.storage("second").get_all_studies()] == ["elsewhere"]
    # And both go on alike: the same next ids.
    made = []
    for machine in (node, copy):
        storage = History(machine).optuna()
        sid = storage.get_study_id_from_name(STUDY)
        made.append((storage.create_new_trial(sid), storage.create_new_study([optuna.study.StudyDirection.MINIMIZE])))
    assert made[0] == made[1]


@pytest.mark.parametrize("item, problem", [
    ({"name": "optuna", "trials": [[0, 0, 0, 9, {}]]}, "trial"),
    ({"name": "optuna", "trials": [[0, 0, 0, 1, {"params": {"x": 1}, "distributions": {}}]]}, "distribution"),
    ({"name": "optuna", "study": {"id": 0}}, "study item"),
    ({"name": "optuna", "journal": {"next_study": -1, "next_trial": 0}}, "whole numbers"),
    ({"name": "", "journal": {"next_study": 0, "next_trial": 0}}, "journal item"),
    ({"name": "optuna", "rows": []}, "journal item"),
])
def test_a_malformed_item_is_refused_and_the_tables_stay_as_they_were(item, problem):
    node = Machine()
    populate(History(node))
    before = node.dump()
    items = [("state", {"applied_index": node.state.applied_index, "seen": []}),
             ("optuna_journal", {"name": "optuna", "journal": {"next_study": 1, "next_trial": 1}}),
             ("optuna_journal", item)]
    with pytest.raises(ValueError, match=problem):
        node.state.restore(node.state.applied_index, items)
    assert node.dump() == before


@pytest.fixture
async def node(tmp_path):
    driver = RaftDriver("n1", "test", tmp_path / "raft.db", "127.0.0.1:1", {}, settings=FAST)
    journal = ReplicatedJournal(driver, tmp_path / "studies.db")
    await driver.start(["n1"])
    await driver.wait_for(lambda: driver.is_leader, 10)
    yield driver, journal
    await driver.stop()


async def test_the_storage_follows_a_restore_and_writes_after_it_land(node):
    driver, journal = node
    storage = journal.storage()
    # The cluster's history; this node applied its start and then fell behind.
    source = Machine()
    history = History(source)
    populate(history)
    for entry in history.entries:
        command = json.loads(entry.data)
        if command["kind"] == "optuna_journal":
            await journal.append(command["body"]["name"], command["body"]["logs"])

    def before() -> tuple[int, dict[int, int]]:
        sid = storage.get_study_id_from_name(STUDY)
        running = {t.number: storage.get_trial_id_from_study_id_trial_number(sid, t.number)
                   for t in storage.get_all_trials(sid) if t.state == TrialState.RUNNING}
        return sid, running

    sid, running = await asyncio.to_thread(before)
    assert len(running) == 2
    # The cluster goes on without it: one running trial ends, a study is added.
    src = history.optuna()
    first_running = min(running.values())
    src.set_trial_intermediate_value(first_running, 9, 0.8)
    src.set_trial_state_values(first_running, TrialState.COMPLETE, [0.8])
    optuna.create_study(study_name="later", storage=src).optimize(lambda t: t.suggest_int("k", 0, 3), n_trials=2)
    # Its snapshot reaches this node, which restores it between two applies, as the driver
    # does (here at this node's own index: the driver's part is not under test).
    items = [(kind, item) for kind, item in as_sent(source.state.capture()()) if kind == "optuna_journal"]
    at = driver.state.applied_index
    driver.state.restore(at, [("state", {"applied_index": at, "seen": []}), *items])
    expected = studies(source.journal.storage())
    steps_before = source.journal.storage().get_trial(max(running.values())).intermediate_values
    assert len(steps_before) == 3 and journal.db.applied == at

    def after() -> tuple[int, int]:
        # The same storage object reads the restored tables.
        assert studies(storage) == expected
        # A runner that held a trial id from before goes on with it, and a new trial gets the
        # id every node gives it.
        last_running = max(running.values())
        assert storage.get_study_id_from_name(STUDY) == sid
        storage.set_trial_intermediate_value(last_running, 5, 0.5)
        storage.set_trial_state_values(last_running, TrialState.COMPLETE, [0.7])
        return last_running, storage.create_new_trial(sid)

    last_running, new_trial = await asyncio.to_thread(after)
    assert new_trial == src.create_new_trial(sid)   # the cluster's next trial id, here as there
    trial = storage.get_trial(last_running)
    assert (trial.state, trial.values, trial.intermediate_values) == (
        TrialState.COMPLETE, [0.7], {**steps_before, 5: 0.5})
    assert storage.get_trial(first_running).values == [0.8]
    assert set(studies(storage)) == {STUDY, "multi", "later"}
