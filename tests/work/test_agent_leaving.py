"""A node that leaves tells the coordinator it has no slots before it hands its tasks back, so
the slot a hand-back frees is never given to the leaving node again (a trial sent to it in
that moment once waited out --grace unanswered)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from nexus_node.work.agent import WorkerAgent
from nexus_node.work.dispatcher import HANDED_BACK
from nexus_node.work.messages import Assignment, WorkUp


class BusyPool:
    """A pool whose one slot never comes free: the task waits in ``take_slot`` when it is
    cancelled, as a running trial would in its runner."""

    slots, trial_memory_mb, threads, info = 1, 100, 1, {}

    async def take_slot(self) -> int:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_leaving_sends_no_slots_before_the_hand_backs():
    driver = SimpleNamespace(status=lambda: SimpleNamespace(term=3), state=SimpleNamespace(applied_index=10))
    agent = WorkerAgent(node_id="n2", cluster="c", address="127.0.0.1:1", pool=BusyPool(), blobs=None,  # type: ignore[arg-type]
                        mesh=SimpleNamespace(driver=driver), placement=None, fetch_blob=lambda sha: None,  # type: ignore[arg-type]
                        storage={})
    up: asyncio.Queue[WorkUp] = asyncio.Queue()
    agent._up = up
    agent._assign(Assignment(lease_id="lease-1", term=3, task_json=b'{"task": "trial", "label": "job/0"}',
                             log_index=0))
    await asyncio.sleep(0)   # the task starts and waits for its slot
    sent: list[WorkUp] = []

    async def coordinator() -> None:   # reads the stream as the coordinator's end would
        while True:
            sent.append(await up.get())
            up.task_done()

    reader = asyncio.create_task(coordinator())
    try:
        await agent.stop(hand_back=True)
    finally:
        reader.cancel()
    kinds = [("heartbeat", m.heartbeat.slots) if m.heartbeat is not None else ("result", m.result.error_kind)
             for m in sent]
    assert kinds == [("heartbeat", 0), ("result", HANDED_BACK)]
