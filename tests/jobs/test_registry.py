"""The replicated records on a one-voter driver: what every node applies, and what survives."""

from __future__ import annotations

import dataclasses

from nexus_node.consensus.driver import MeshSettings, RaftDriver
from nexus_node.jobs.events import NEW_BEST, STATE_CHANGED, TRIAL_FINISHED, EventHub, TrialView
from nexus_node.jobs.records import JobRecord, JobSpecRecord, ModelRecord
from nexus_node.jobs.registry import ReplicatedRecords

FAST = MeshSettings(tick_interval=0.02, propose_timeout=10.0)


async def open_records(tmp_path, hub: EventHub | None = None) -> tuple[RaftDriver, ReplicatedRecords]:
    driver = RaftDriver("n1", "test", tmp_path / "raft.db", "127.0.0.1:1", {}, settings=FAST)
    records = ReplicatedRecords(driver, hub or EventHub())
    await driver.start(["n1"])
    await driver.wait_for(lambda: driver.is_leader, 10)
    return driver, records


def job(state: str = "PENDING", **kw) -> JobRecord:
    return JobRecord(job_id="job-1", spec=JobSpecRecord(target="y"), created_at=1.0, state=state, **kw)


async def test_events_ride_on_applied_writes_and_records_survive_a_restart(tmp_path):
    hub = EventHub()
    driver, records = await open_records(tmp_path, hub)
    with hub.subscribe("job-1") as q:
        await records.put_job(job())
        await records.put_job(job())                       # same state: no event
        await records.put_job(job("SEARCHING"))
        view = TrialView(number=0, state="COMPLETE", value=0.5)
        await records.put_job(job("SEARCHING", best_value=0.5), trial=view, kinds=(TRIAL_FINISHED, NEW_BEST))
        got = [(ev.kind, ev.job.state, ev.trial.value if ev.trial else None) for ev in
               [q.get_nowait() for _ in range(q.qsize())]]
    assert got == [(STATE_CHANGED, "PENDING", None), (STATE_CHANGED, "SEARCHING", None),
                   (TRIAL_FINISHED, "SEARCHING", 0.5), (NEW_BEST, "SEARCHING", 0.5)]
    model = ModelRecord("model-1", "job-1", "regression", "y", ["a"], [], {"r2": 0.9}, "0" * 64, 10, 2.0)
    await records.put_model(model)
    await records.put_blob("ab" * 32, 5, "dataset")
    await driver.stop()

    driver, again = await open_records(tmp_path)   # the log is replayed into fresh records
    try:
        await driver.wait_for(lambda: "job-1" in again.jobs, 10)
        assert (await again.get_job("job-1")).best_value == 0.5
        assert await again.model_for_job("job-1") == model
        assert again.holders("ab" * 32) == {"n1"}
    finally:
        await driver.stop()


async def test_a_cancel_is_sticky_and_an_ended_job_stays_ended(tmp_path):
    driver, records = await open_records(tmp_path)
    try:
        await records.put_job(job("SEARCHING"))
        await records.cancel_job("job-1")
        # The coordinator's next write did not know of the cancel yet: it must not undo it.
        await records.put_job(job("SEARCHING", message="trial 3 done"))
        assert (await records.get_job("job-1")).cancel_requested
        await records.put_job(dataclasses.replace(job("CANCELLED"), cancel_requested=True))
        await records.put_job(job("SEARCHING"))          # a late write from a deposed coordinator
        assert (await records.get_job("job-1")).state == "CANCELLED"
    finally:
        await driver.stop()


async def test_only_an_ended_job_is_deleted_and_its_model_goes_only_when_asked(tmp_path):
    driver, records = await open_records(tmp_path)
    deletions: list[None] = []
    records.delete_listeners.append(lambda: deletions.append(None))
    model = ModelRecord("model-1", "job-1", "regression", "y", ["a"], [], {"r2": 0.9}, "0" * 64, 10, 2.0)
    try:
        await records.put_job(job("SEARCHING"))
        await records.delete_job("job-1")           # running: every node leaves it as it is
        assert (await records.get_job("job-1")).state == "SEARCHING" and deletions == []
        await records.put_job(job("COMPLETED"))
        await records.put_model(model)
        await records.delete_job("job-1")
        assert await records.get_job("job-1") is None
        assert await records.get_model("model-1") == model   # a model goes only when asked
        await records.delete_model("model-1")
        assert await records.list_models() == [] and len(deletions) == 2
    finally:
        await driver.stop()

    driver, again = await open_records(tmp_path)   # the replayed log deletes them alike
    try:
        await again.put_member("n1", "127.0.0.1:1")   # applied after every replayed entry
        assert again.jobs == {} and again.models == {}
    finally:
        await driver.stop()


async def test_a_placement_names_its_job_and_goes_with_its_last_holder(tmp_path):
    driver, records = await open_records(tmp_path)
    try:
        await records.put_blob("ab" * 32, 5, "dataset", job_id="job-1")
        assert records.blobs["ab" * 32].job_id == "job-1"
        await records._commit({"op": "put_blob", "sha256": "ab" * 32, "size": 5, "kind": "dataset", "holder": "n2"})
        await records.drop_blob("ab" * 32)
        assert records.holders("ab" * 32) == {"n2"}
        await records._commit({"op": "drop_blob", "sha256": "ab" * 32, "holder": "n2"})
        assert "ab" * 32 not in records.blobs   # no placement outlives the last copy
    finally:
        await driver.stop()
