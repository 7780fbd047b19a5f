"""The work stream on the wire: ``nexus.v1`` protobuf <-> :mod:`nexus_node.work.messages`.

The one module of ``work/`` that imports the generated code. The coordinator's end
(``api/peer_service.py``'s ``Work``) converts with :func:`up_from_pb` and :func:`down_to_pb`;
the node's end opens its call through :func:`open_stream`, which speaks dataclasses both ways.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

from nexus_node._generated.nexus.v1 import peer_pb2 as pb
from nexus_node.work.messages import (
    Assignment,
    CancelTask,
    Heartbeat,
    RunningTrial,
    TaskResult,
    WorkDown,
    WorkUp,
)


def heartbeat_to_pb(h: Heartbeat) -> pb.Heartbeat:
    return pb.Heartbeat(term=h.term, slots=h.slots, task_memory_bytes=h.task_memory_bytes,
                        memory_free_bytes=h.memory_free_bytes, memory_total_bytes=h.memory_total_bytes,
                        cores=h.cores, accelerator=h.accelerator, running=list(h.running),
                        trials=[pb.RunningTrial(lease_id=t.lease_id, study_name=t.study_name,
                                                trial_number=t.trial_number) for t in h.trials])


def heartbeat_from_pb(h: pb.Heartbeat) -> Heartbeat:
    return Heartbeat(term=int(h.term), slots=int(h.slots), task_memory_bytes=int(h.task_memory_bytes),
                     memory_free_bytes=int(h.memory_free_bytes), memory_total_bytes=int(h.memory_total_bytes),
                     cores=int(h.cores), accelerator=h.accelerator, running=tuple(h.running),
                     trials=tuple(RunningTrial(t.lease_id, t.study_name, int(t.trial_number)) for t in h.trials))


def up_to_pb(m: WorkUp) -> pb.WorkUp:
    out = pb.WorkUp(cluster=m.cluster, node_id=m.node_id)
    if m.heartbeat is not None:
        out.heartbeat.CopyFrom(heartbeat_to_pb(m.heartbeat))
    elif m.result is not None:
        r = m.result
        out.result.CopyFrom(pb.TaskResult(lease_id=r.lease_id, ok=r.ok, result_json=r.result_json,
                                          error_kind=r.error_kind, error_message=r.error_message))
    return out


def up_from_pb(m: pb.WorkUp) -> WorkUp:
    which = m.WhichOneof("body")
    if which == "heartbeat":
        return WorkUp(m.cluster, m.node_id, heartbeat=heartbeat_from_pb(m.heartbeat))
    if which == "result":
        r = m.result
        return WorkUp(m.cluster, m.node_id, result=TaskResult(
            lease_id=r.lease_id, ok=r.ok, result_json=bytes(r.result_json),
            error_kind=r.error_kind, error_message=r.error_message))
    return WorkUp(m.cluster, m.node_id)   # neither: ignored by the dispatcher


def down_to_pb(m: WorkDown) -> pb.WorkDown:
    if isinstance(m, Assignment):
        return pb.WorkDown(assign=pb.Assignment(lease_id=m.lease_id, term=m.term, task_json=m.task_json,
                                                log_index=m.log_index))
    return pb.WorkDown(cancel=pb.CancelTask(lease_id=m.lease_id, reason=m.reason))


def down_from_pb(m: pb.WorkDown) -> WorkDown | None:
    which = m.WhichOneof("body")
    if which == "assign":
        a = m.assign
        return Assignment(lease_id=a.lease_id, term=int(a.term), task_json=bytes(a.task_json),
                          log_index=int(a.log_index))
    if which == "cancel":
        return CancelTask(lease_id=m.cancel.lease_id, reason=m.cancel.reason)
    return None   # a newer coordinator's message this node does not know


async def ups_from_pb(inbound: AsyncIterator[pb.WorkUp]) -> AsyncIterator[WorkUp]:
    async for msg in inbound:
        yield up_from_pb(msg)


class WorkStream:
    """A node's open ``Work`` call to its coordinator, in dataclasses."""

    def __init__(self, call: Any) -> None:
        self._call = call

    async def write(self, msg: WorkUp) -> None:
        await self._call.write(up_to_pb(msg))

    async def __aiter__(self) -> AsyncIterator[WorkDown]:
        async for msg in self._call:
            down = down_from_pb(msg)
            if down is not None:
                yield down

    async def done_writing(self) -> None:
        """Half-closes the call: the coordinator reads what was sent, then ends the stream."""
        await self._call.done_writing()

    def cancel(self) -> None:
        self._call.cancel()


def open_stream(transport: Any, address: str) -> WorkStream:
    """Opens the ``Work`` call to ``address`` over the node's peer transport (its channel,
    credentials and the peer secret)."""
    return WorkStream(transport.stub(address).Work(metadata=transport.metadata))
