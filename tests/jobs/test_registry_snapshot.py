"""Records restored from a snapshot: the node's views follow as they follow applied writes."""

from __future__ import annotations

from nexus_node.jobs.events import STATE_CHANGED
from nexus_node.jobs.manager import JobManager
from nexus_node.jobs.records import JOB_STUDY_PREFIX
from tests.consensus.machines import History, Machine, as_sent, blob, job, populate


async def test_a_restore_tells_every_listener_what_the_writes_would_have():
    source = Machine()
    populate(History(source))
    node = Machine()
    log = History(node)
    log.commit("records", job("a", "PENDING"))        # in the snapshot: SEARCHING
    log.commit("records", job("b", "COMPLETED"))      # the same
    log.commit("records", job("old", "COMPLETED"))    # not in it: deleted since
    log.commit("records", blob("ef", "n1"))
    while node.state.applied_index < source.state.applied_index:
        log.commit("barrier", {})
    told: dict[str, list] = {"jobs": [], "blobs": [], "deleted": []}
    node.records.job_listeners.append(lambda j: told["jobs"].append((j.job_id, j.state, j.cancel_requested)))
    node.records.blob_listeners.append(lambda b: told["blobs"].append((b.sha256[:2], sorted(b.holders))))
    node.records.delete_listeners.append(lambda: told["deleted"].append(True))
    # This node does not coordinate: its job manager leaves restored jobs alone, as it leaves
    # applied job writes.
    manager = JobManager(db=node.records, blobs=None, serve_pool=None, storage=lambda: None,  # type: ignore[arg-type]
                         node_id="n2", events=node.hub)
    node.records.job_listeners.append(manager.job_applied)

    with node.hub.subscribe("a") as a, node.hub.subscribe("b") as b, node.hub.subscribe("c") as c:
        node.state.restore(source.state.applied_index, as_sent(source.state.capture()()))
        events = {name: [(e.kind, e.job.state) for e in [q.get_nowait() for _ in range(q.qsize())]]
                  for name, q in (("a", a), ("b", b), ("c", c))}

    assert sorted(told["jobs"]) == [("a", "SEARCHING", False), ("b", "COMPLETED", False), ("c", "SEARCHING", True)]
    assert told["blobs"] == [("ab", ["n1", "n2"])]
    assert told["deleted"] == [True]   # job "old" and blob "ef" are gone: the collector looks
    assert node.recorded == [("n1", "10.0.0.1:7000"), ("n2", "10.0.0.2:7000")]
    # A watcher sees a state it missed; one whose job is as it was sees nothing new.
    assert events == {"a": [(STATE_CHANGED, "SEARCHING")], "b": [], "c": [(STATE_CHANGED, "SEARCHING")]}
    assert not manager.active and manager.ctx.jobs == {}
    assert (await node.records.get_job("a")).state == "SEARCHING"
    assert node.records.job_of_study(JOB_STUDY_PREFIX + "c") is not None and await node.records.get_job("old") is None
