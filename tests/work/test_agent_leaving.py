"""A node that leaves tells the coordinator it has no slots before it hands its tasks back, so
the slot a hand-back frees is never given to the leaving node again (a trial sent to it in
that moment once waited out --grace unanswered)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from nexus_node.work.agent import WorkerAgent
from nexus_node.work.dispatcher import HANDED_BACK
from nexus_node.work.messages import Assignment, RunningTrial, WorkUp


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


class LeaderDriver:
    """A driver whose leader is the test's coordinator, for the life of the test."""

    leader = "coordinator"
    state = SimpleNamespace(applied_index=10)

    def __init__(self, address: str) -> None:
        self.address = address

    def peer_address(self, node_id: str) -> str:
        return self.address

    def status(self) -> SimpleNamespace:
        return SimpleNamespace(term=3)

    async def wait_for(self, predicate, timeout):  # noqa: ANN001
        await asyncio.sleep(timeout)   # the leader never changes here


async def test_a_leaving_node_half_closes_its_stream_and_the_coordinator_reads_every_hand_back():
    """The hand-backs reach the coordinator's reader before the stream ends: the node half-closes
    the call after them instead of cancelling it (a cancelled call could drop what the
    coordinator had not read yet; under load a hand-back was lost so, and its trial waited
    out --grace)."""
    import grpc

    from nexus_node._generated.nexus.v1 import peer_pb2 as pb
    from nexus_node._generated.nexus.v1 import peer_pb2_grpc

    read: list[pb.WorkUp] = []
    ended: list[str] = []
    assigned = asyncio.Event()

    class Coordinator(peer_pb2_grpc.PeerServiceServicer):
        async def Work(self, request_iterator, context):  # noqa: ANN001
            first = await anext(aiter(request_iterator))
            read.append(first)
            yield pb.WorkDown(assign=pb.Assignment(lease_id="lease-1", term=3, log_index=0,
                                                   task_json=b'{"task": "trial", "label": "job/0"}'))
            try:
                async for msg in request_iterator:
                    read.append(msg)
                ended.append("cancelled" if context.cancelled() else "half-closed")
            except Exception as exc:  # noqa: BLE001 - the test records how the stream ended
                ended.append(f"broken: {exc!r}")

    server = grpc.aio.server()
    peer_pb2_grpc.add_PeerServiceServicer_to_server(Coordinator(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    transport = SimpleNamespace(stub=lambda address: peer_pb2_grpc.PeerServiceStub(channel), metadata=())
    agent = WorkerAgent(node_id="n2", cluster="c", address="127.0.0.1:1", pool=BusyPool(), blobs=None,  # type: ignore[arg-type]
                        mesh=SimpleNamespace(driver=LeaderDriver(f"127.0.0.1:{port}"), transport=transport),
                        placement=None, fetch_blob=lambda sha: None, storage={})  # type: ignore[arg-type]
    agent.on_change = lambda: assigned.set() if agent.running else None
    try:
        agent.start()
        await asyncio.wait_for(assigned.wait(), 10)
        await asyncio.wait_for(agent.stop(hand_back=True), 10)
        await server.stop(grace=5)
    finally:
        await channel.close()
        await server.stop(None)
    assert ended == ["half-closed"]
    results = [m.result for m in read if m.WhichOneof("body") == "result"]
    assert [(r.lease_id, r.error_kind) for r in results] == [("lease-1", HANDED_BACK)]


async def test_the_heartbeat_names_the_trials_the_node_runs():
    """What a new coordinator adopts from: each running trial's study and number."""
    driver = SimpleNamespace(status=lambda: SimpleNamespace(term=3), state=SimpleNamespace(applied_index=10))
    agent = WorkerAgent(node_id="n2", cluster="c", address="127.0.0.1:1", pool=BusyPool(), blobs=None,  # type: ignore[arg-type]
                        mesh=SimpleNamespace(driver=driver), placement=None, fetch_blob=lambda sha: None,  # type: ignore[arg-type]
                        storage={})
    agent._assign(Assignment(lease_id="lease-7", term=3, log_index=0, task_json=json.dumps(
        {"task": "trial", "label": "job-1/7", "study_name": "nexus-job-1", "trial_number": 7}).encode()))
    agent._assign(Assignment(lease_id="lease-p", term=3, log_index=0, task_json=b'{"task": "prepare"}'))
    await asyncio.sleep(0)   # both tasks start and wait for a slot
    beat = agent._heartbeat().heartbeat
    assert beat is not None
    assert set(beat.running) == {"lease-7", "lease-p"}
    assert beat.trials == (RunningTrial("lease-7", "nexus-job-1", 7),)
    await agent.stop(hand_back=False)


async def test_an_assignment_that_reaches_a_leaving_node_is_handed_back_not_failed():
    """Re-run elsewhere without counting against the configuration, as a running task given
    up at leaving is (a refusal as a failure once failed the trial for good)."""
    driver = SimpleNamespace(status=lambda: SimpleNamespace(term=3), state=SimpleNamespace(applied_index=10))
    agent = WorkerAgent(node_id="n2", cluster="c", address="127.0.0.1:1", pool=BusyPool(), blobs=None,  # type: ignore[arg-type]
                        mesh=SimpleNamespace(driver=driver), placement=None, fetch_blob=lambda sha: None,  # type: ignore[arg-type]
                        storage={})
    up: asyncio.Queue[WorkUp] = asyncio.Queue()
    agent._up = up   # type: ignore[assignment]
    agent._leaving = True
    agent._assign(Assignment(lease_id="late", term=3, log_index=0, task_json=b'{"task": "trial"}'))
    sent = up.get_nowait()
    assert sent.result is not None and sent.result.lease_id == "late"
    assert (sent.result.error_kind, sent.result.error_message) == (HANDED_BACK, "node n2 left while running it")
