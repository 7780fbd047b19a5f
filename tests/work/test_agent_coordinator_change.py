"""A worker and the coordinators it streams to, over real gRPC on loopback (issue 22).

* A worker whose driver names a new leader leaves the old coordinator's stream at once, even
  when that coordinator is silent (cut off by the network, its stream neither answered nor
  broken), and streams to the new one: it must be heard within the window in which the new
  coordinator adopts the trials that live nodes run.
* An assignment from a term older than one the worker has seen is refused with the reason,
  and never run.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import grpc

from nexus_node._generated.nexus.v1 import peer_pb2 as pb
from nexus_node._generated.nexus.v1 import peer_pb2_grpc
from nexus_node.work.agent import WorkerAgent


class SlotPool:
    """A pool with one slot that records the tasks that reached it."""

    slots, trial_memory_mb, threads, info = 1, 100, 1, {}

    def __init__(self) -> None:
        self.taken = 0

    async def take_slot(self) -> int:
        self.taken += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class Driver:
    """A node's driver as the agent reads it: the leader and term the test sets."""

    def __init__(self, addresses: dict[str, str], leader: str, term: int) -> None:
        self.addresses, self.leader, self.term = addresses, leader, term
        self.state = SimpleNamespace(applied_index=10)
        self._changed = asyncio.Event()

    def peer_address(self, node_id: str) -> str | None:
        return self.addresses.get(node_id)

    def status(self) -> SimpleNamespace:
        return SimpleNamespace(term=self.term)

    def elect(self, leader: str, term: int) -> None:
        self.leader, self.term = leader, term
        self._changed.set()

    async def wait_for(self, predicate, timeout: float) -> None:  # noqa: ANN001
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


class Coordinator(peer_pb2_grpc.PeerServiceServicer):
    """A coordinator's Work end: records what each stream brings; ``silent`` never answers and
    never ends a stream (a coordinator behind a pulled cable); ``send`` is put on a stream once
    the worker's first heartbeat arrives."""

    def __init__(self, silent: bool = False, send: pb.WorkDown | None = None) -> None:
        self.silent, self.send = silent, send
        self.heard: list[pb.WorkUp] = []
        self.streams = 0
        self.ended = 0   # streams that ended
        self.got = asyncio.Event()
        self._changed = asyncio.Event()

    async def until(self, predicate) -> None:  # noqa: ANN001
        """Returns once ``predicate()`` holds, checked as each message or stream end arrives."""
        while not predicate():
            self._changed.clear()
            await self._changed.wait()

    def _note(self) -> None:
        self._changed.set()

    async def Work(self, request_iterator, context):  # noqa: ANN001
        self.streams += 1
        try:
            async for msg in request_iterator:
                self.heard.append(msg)
                self.got.set()
                self._note()
                if self.send is not None and not self.silent:
                    yield self.send
                    self.send = None
        finally:
            self.ended += 1
            self._note()


async def serve(servicer: Coordinator) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    peer_pb2_grpc.add_PeerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def agent_for(driver: Driver, pool: SlotPool) -> WorkerAgent:
    channels: dict[str, grpc.aio.Channel] = {}

    def stub(address: str) -> peer_pb2_grpc.PeerServiceStub:
        if address not in channels:
            channels[address] = grpc.aio.insecure_channel(address)
        return peer_pb2_grpc.PeerServiceStub(channels[address])

    transport = SimpleNamespace(stub=stub, metadata=())
    agent = WorkerAgent(node_id="w", cluster="c", address="127.0.0.1:1", pool=pool, blobs=None,  # type: ignore[arg-type]
                        mesh=SimpleNamespace(driver=driver, transport=transport), placement=None,  # type: ignore[arg-type]
                        fetch_blob=lambda sha: None, storage={})
    return agent


async def test_a_worker_leaves_a_silent_old_coordinator_as_soon_as_it_learns_the_new_one():
    old, new = Coordinator(silent=True), Coordinator()
    old_server, old_address = await serve(old)
    new_server, new_address = await serve(new)
    driver = Driver({"a": old_address, "b": new_address}, leader="a", term=3)
    agent = agent_for(driver, SlotPool())
    try:
        agent.start()
        await asyncio.wait_for(old.got.wait(), 10)   # streaming to the old coordinator
        assert new.streams == 0
        driver.elect("b", 4)
        # Heard by the new coordinator well within its adoption window (2 heartbeats + 0.5 s),
        # not after keepalive gives the silent stream up (10-15 s).
        await asyncio.wait_for(new.got.wait(), 2.0)
        assert new.heard[0].heartbeat.term == 4
        # ... and its stream to the silent one ended, not left to keepalive.
        await asyncio.wait_for(old.until(lambda: old.ended == 1), 5)
    finally:
        await agent.stop(hand_back=False)
        await old_server.stop(None)
        await new_server.stop(None)


async def test_a_worker_refuses_an_assignment_of_a_term_older_than_one_it_has_seen():
    stale = pb.WorkDown(assign=pb.Assignment(lease_id="stale-1", term=3, log_index=0,
                                             task_json=b'{"task": "trial", "label": "job/0"}'))
    old = Coordinator(send=stale)
    server, address = await serve(old)
    # The worker already heard of term 4 (a new coordinator's election); the stream is still
    # to the old one, which assigns a trial in its term 3.
    driver = Driver({"a": address}, leader="a", term=4)
    pool = SlotPool()
    agent = agent_for(driver, pool)
    try:
        agent.start()
        await asyncio.wait_for(old.until(lambda: any(m.WhichOneof("body") == "result" for m in old.heard)), 10)
    finally:
        await agent.stop(hand_back=False)
        await server.stop(None)
    (result,) = [m.result for m in old.heard if m.WhichOneof("body") == "result"]
    assert (result.lease_id, result.ok, result.error_kind) == ("stale-1", False, "failed_precondition")
    assert result.error_message == "stale assignment of term 3: this node has seen term 4"
    assert pool.taken == 0 and "stale-1" not in agent.running

