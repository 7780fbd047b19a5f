"""The coordinator's dispatcher driven through its stream interface, without sockets: nodes are
queues of WorkUp messages, the clock is a number the test moves."""

from __future__ import annotations

import asyncio
import json

import pytest

from nexus_node.work.dispatcher import HANDED_BACK, Dispatcher, WorkSettings
from nexus_node.work.messages import Assignment, CancelTask, Heartbeat, RunningTrial, TaskResult, WorkDown, WorkUp

MB = 1 << 20


async def until(predicate) -> None:
    """Yields to the loop until ``predicate()`` holds (the dispatcher's reader tasks run)."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


class FakeNode:
    """One node's end of a work stream."""

    def __init__(self, dispatcher: Dispatcher, node_id: str, slots: int = 1, memory: int = 512 * MB) -> None:
        self.d, self.node_id, self.slots, self.memory = dispatcher, node_id, slots, memory
        self.up: asyncio.Queue[WorkUp | None] = asyncio.Queue()
        self.down: asyncio.Queue[WorkDown] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def heartbeat(self, running: tuple[str, ...] = ()) -> WorkUp:
        return WorkUp(cluster="c", node_id=self.node_id, heartbeat=Heartbeat(
            term=1, slots=self.slots, task_memory_bytes=self.memory, running=running))

    async def _inbound(self):
        while (msg := await self.up.get()) is not None:
            yield msg

    async def _pump(self) -> None:
        async for msg in self.d.serve(self.heartbeat(), self._inbound()):
            self.down.put_nowait(msg)

    async def connect(self) -> None:
        self._task = asyncio.create_task(self._pump())
        await until(lambda: any(v.node_id == self.node_id for v in self.d.nodes()))

    async def beat(self, now: float) -> None:
        self.up.put_nowait(self.heartbeat())
        await until(lambda: any(v.node_id == self.node_id and v.last_heartbeat == now for v in self.d.nodes()))

    async def disconnect(self) -> None:
        self.up.put_nowait(None)
        assert self._task is not None
        await self._task

    async def next_down(self) -> WorkDown:
        return await asyncio.wait_for(self.down.get(), 5)

    def send_result(self, lease_id: str, ok: bool = True, **kw) -> None:
        self.up.put_nowait(WorkUp(cluster="c", node_id=self.node_id, result=TaskResult(
            lease_id=lease_id, ok=ok, result_json=json.dumps(kw.pop("result", {})).encode(), **kw)))


@pytest.fixture
def clock():
    return [0.0]


@pytest.fixture
def applied():
    return [0]


@pytest.fixture
async def dispatcher(clock, applied):
    d = Dispatcher(term=7, settings=WorkSettings(grace=5.0, max_retries=1), clock=lambda: clock[0],
                   applied_index=lambda: applied[0])
    yield d
    await d.stop()


async def test_an_assignment_carries_the_term_and_its_result_comes_back(dispatcher, applied):
    a = FakeNode(dispatcher, "a")
    await a.connect()
    lease = await dispatcher.reserve("job1", 10 * MB, rank=1.0)
    assert lease.node_id == "a" and lease.term == 7
    applied[0] = 41   # the coordinator's applied index when it sends: the node catches up to it
    fut = dispatcher.send(lease, {"task": "trial", "x": 1}, config_key="cfg", trial_number=0)
    msg = await a.next_down()
    assert isinstance(msg, Assignment)
    assert msg.lease_id == lease.lease_id and msg.term == 7 and msg.log_index == 41
    assert json.loads(msg.task_json) == {"task": "trial", "x": 1}
    a.send_result(lease.lease_id, result={"value": 0.5})
    outcome = await asyncio.wait_for(fut, 5)
    assert outcome.ok and outcome.result == {"value": 0.5} and outcome.node_id == "a"
    assert dispatcher.busy("a") == 0


async def test_a_silent_node_loses_its_task_which_may_run_again_and_its_late_result_is_refused(dispatcher, clock):
    a, b = FakeNode(dispatcher, "a"), FakeNode(dispatcher, "b")
    await a.connect()
    lease = await dispatcher.reserve("job1", MB, rank=1.0)
    fut = dispatcher.send(lease, {"task": "trial"}, config_key="cfg")
    await b.connect()
    clock[0] = 4.0
    await b.beat(4.0)
    dispatcher.check(clock[0])
    assert not fut.done()   # within grace
    clock[0] = 5.5
    await b.beat(5.5)
    dispatcher.check(clock[0])
    outcome = fut.result()
    assert outcome.lost and not outcome.handed_back and "missed heartbeats" in outcome.message
    # Its slot is gone with it: the next reservation goes to the live node.
    assert (await dispatcher.reserve("job1", MB, rank=1.0)).node_id == "b"
    # The dead node's result arrives late (on its old stream): refused, counted nowhere.
    a.send_result(lease.lease_id, result={"value": 1.0})
    await a.disconnect()   # the stream has read everything the node sent
    assert fut.result().lost and dispatcher.busy("a") == 0


async def test_a_reconnecting_node_gets_its_unresolved_assignments_again(dispatcher):
    a = FakeNode(dispatcher, "a")
    await a.connect()
    lease = await dispatcher.reserve("job1", MB, rank=1.0)
    fut = dispatcher.send(lease, {"task": "prepare"})
    first = await a.next_down()
    await a.disconnect()
    await a.connect()
    again = await a.next_down()
    assert isinstance(again, Assignment) and again.lease_id == first.lease_id == lease.lease_id
    a.send_result(lease.lease_id, result={"files": {}})
    assert (await asyncio.wait_for(fut, 5)).ok


async def test_a_lease_the_coordinator_does_not_hold_is_cancelled_on_the_node(dispatcher):
    a = FakeNode(dispatcher, "a")
    await a.connect()
    a.up.put_nowait(a.heartbeat(running=("from-an-earlier-coordinator",)))
    msg = await a.next_down()
    assert isinstance(msg, CancelTask) and msg.lease_id == "from-an-earlier-coordinator"


async def test_cancelling_a_job_frees_its_slot_at_once_for_another_job(dispatcher):
    a = FakeNode(dispatcher, "a")
    await a.connect()
    long_lease = await dispatcher.reserve("long", MB, rank=1.0)
    long_fut = dispatcher.send(long_lease, {"task": "trial"})
    await a.next_down()
    waiting = asyncio.create_task(dispatcher.reserve("small", MB, rank=2.0))
    await until(lambda: "small" in dispatcher._waiting)
    assert not waiting.done()   # one slot, taken
    dispatcher.cancel_job("long")
    assert (await a.next_down()) == CancelTask(long_lease.lease_id, "the job was cancelled")
    assert long_fut.result().lost and not long_fut.result().handed_back
    assert (await asyncio.wait_for(waiting, 5)).node_id == "a"
    # The cancelled trial's own result, when its runner stops, is refused.
    a.send_result(long_lease.lease_id, result={})
    await a.disconnect()
    assert dispatcher.busy("a") == 1 and dispatcher.schedule.running_of("small")


async def test_a_task_handed_back_by_a_leaving_node_is_lost_and_may_run_again(dispatcher):
    a = FakeNode(dispatcher, "a")
    await a.connect()
    lease = await dispatcher.reserve("job1", MB, rank=1.0)
    fut = dispatcher.send(lease, {"task": "trial"}, config_key="cfg")
    a.send_result(lease.lease_id, ok=False, error_kind=HANDED_BACK, error_message="node a left")
    outcome = await asyncio.wait_for(fut, 5)
    assert outcome.lost and outcome.handed_back   # not the configuration's fault (work.retries)


async def test_a_task_no_node_could_ever_hold_is_refused_with_the_sizes(dispatcher):
    a = FakeNode(dispatcher, "a", memory=100 * MB)
    await a.connect()
    with pytest.raises(Exception, match="needs 200 MB; the largest node has 100 MB"):
        await dispatcher.reserve("big", 200 * MB, rank=1.0)


@pytest.fixture
async def adopting(clock):
    """A new coordinator's dispatcher that may adopt the trials of study ``nexus-job-1``
    (a window of 2 s), and node a, connected to it."""
    d = Dispatcher(term=8, settings=WorkSettings(grace=5.0), clock=lambda: clock[0],
                   adopt_from=["nexus-job-1"], adopt_window=2.0)
    d.start()
    a = FakeNode(d, "a", slots=2)
    await a.connect()
    yield d, a
    await d.stop()


def claim(node: FakeNode, *trials: RunningTrial) -> None:
    """``node``'s heartbeat naming ``trials`` (leases of an earlier coordinator)."""
    node.up.put_nowait(WorkUp(cluster="c", node_id=node.node_id, heartbeat=Heartbeat(
        term=8, slots=node.slots, task_memory_bytes=node.memory, running=tuple(t.lease_id for t in trials),
        trials=trials)))


async def test_a_new_coordinator_holds_claims_on_its_searches_and_adopts_one_under_its_node_s_lease(adopting, clock):
    d, a = adopting
    # Node a runs trial 4 of job 1 (an earlier coordinator's lease) and a trial of a job this
    # coordinator does not adopt from.
    claim(a, RunningTrial("old-4", "nexus-job-1", 4), RunningTrial("old-x", "nexus-job-2", 0))
    cancel = await a.next_down()
    assert isinstance(cancel, CancelTask) and cancel.lease_id == "old-x"   # not held: cancelled
    clock[0] = 2.5   # past the window: claims_for answers at once
    (c,) = await d.claims_for("nexus-job-1")
    assert (c.node_id, c.lease_id, c.trial_number) == ("a", "old-4", 4)
    lease, fut = d.adopt(c, "job-1", 10 * MB, {"task": "trial", "trial_number": 4})
    assert lease.lease_id == "old-4" and lease.node_id == "a" and d.busy("a") == 1
    again = await a.next_down()   # sent again under the same lease: the node runs on
    assert isinstance(again, Assignment) and again.lease_id == "old-4" and again.term == 8
    d.settle_claims("nexus-job-1")
    a.send_result("old-4", result={"value": 0.9})
    outcome = await asyncio.wait_for(fut, 5)
    assert outcome.ok and outcome.result == {"value": 0.9} and outcome.node_id == "a"


async def test_claims_a_search_refuses_or_leaves_are_cancelled_on_their_nodes(adopting, clock):
    d, a = adopting
    claim(a, RunningTrial("L1", "nexus-job-1", 1), RunningTrial("L2", "nexus-job-1", 2))
    await until(lambda: len(d._claims) == 2)
    clock[0] = 2.5
    claims = {c.lease_id: c for c in await d.claims_for("nexus-job-1")}
    d.settle_claims("nexus-job-1", [(claims["L1"], "trial 1 already finished in the study")])
    first, second = await a.next_down(), await a.next_down()
    assert (first.lease_id, first.reason) == ("L1", "trial 1 already finished in the study")
    assert second.lease_id == "L2" and "nobody adopted it" in second.reason
    # Decided: a later heartbeat naming the study's old lease is cancelled at once.
    claim(a, RunningTrial("L2", "nexus-job-1", 2))
    assert (await a.next_down()).lease_id == "L2"


async def test_a_slot_a_held_claim_takes_is_not_granted_to_another_job(adopting, clock):
    d, a = adopting   # node a has two slots
    claim(a, RunningTrial("old-1", "nexus-job-1", 1), RunningTrial("old-2", "nexus-job-1", 2))
    await until(lambda: len(d._claims) == 2)
    waiting = asyncio.ensure_future(d.reserve("job-9", 10 * MB, rank=1.0))
    await asyncio.sleep(0)
    assert not waiting.done()   # both slots run trials that may be adopted
    clock[0] = 2.5
    claims = {c.lease_id: c for c in await d.claims_for("nexus-job-1")}
    d.adopt(claims["old-1"], "job-1", 10 * MB, {"task": "trial", "trial_number": 1})
    d.settle_claims("nexus-job-1", [(claims["old-2"], "trial 2 already finished in the study")])
    lease = await asyncio.wait_for(waiting, 5)   # the refused claim's slot is free again
    assert lease.node_id == "a" and d.busy("a") == 2


async def test_a_leaving_node_s_unanswered_task_is_lost_when_its_stream_ends(dispatcher):
    a = FakeNode(dispatcher, "a")
    await a.connect()
    lease = await dispatcher.reserve("job1", 10 * MB, rank=1.0)
    fut = dispatcher.send(lease, {"task": "trial"}, trial_number=0)
    await a.next_down()
    # It says it takes no more work, then closes its stream without answering the task (it
    # refused it after its stream was half-closed): lost at once, handed back, not at --grace.
    a.slots = 0
    a.up.put_nowait(a.heartbeat())
    await a.disconnect()
    outcome = await asyncio.wait_for(fut, 5)
    assert outcome.lost and outcome.handed_back and outcome.message == "node a left while running it"


async def test_queued_tasks_and_heartbeat_ages_are_what_an_operator_sees(dispatcher, clock):
    """The metrics read these: reservations still waiting for a slot, and each node's silence."""
    a, b = FakeNode(dispatcher, "a"), FakeNode(dispatcher, "b")
    await a.connect()
    await b.connect()
    assert dispatcher.queued() == 0 and dispatcher.heartbeat_ages() == {"a": 0.0, "b": 0.0}
    leases = [await dispatcher.reserve("job1", MB, rank=1.0) for _ in range(2)]   # both slots
    waiting = [asyncio.create_task(dispatcher.reserve("job2", MB, rank=2.0)) for _ in range(2)]
    await until(lambda: dispatcher.queued() == 2)
    clock[0] = 3.0
    await b.beat(3.0)
    clock[0] = 6.5   # a is silent past grace: declared dead, and its age still told
    dispatcher.check(clock[0])
    assert dispatcher.heartbeat_ages() == {"a": 6.5, "b": 3.5}
    # b's slot is freed: one waiting task gets it, the other still waits (a is dead).
    dispatcher.release(next(lease for lease in leases if lease.node_id == "b"))
    await until(lambda: sum(t.done() for t in waiting) == 1)
    assert dispatcher.queued() == 1
    dispatcher.cancel_job("job2")
    assert dispatcher.queued() == 0
    await asyncio.gather(*waiting, return_exceptions=True)
