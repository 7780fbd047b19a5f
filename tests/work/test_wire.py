"""The work stream's protobuf adapter: every message survives the round trip unchanged."""

from __future__ import annotations

from nexus_node._generated.nexus.v1 import peer_pb2 as pb
from nexus_node.work import wire
from nexus_node.work.messages import Assignment, CancelTask, Heartbeat, RunningTrial, TaskResult, WorkUp


def test_up_messages_round_trip():
    beat = WorkUp("c", "n1", heartbeat=Heartbeat(term=3, slots=2, task_memory_bytes=1 << 30, memory_free_bytes=5,
                                                 memory_total_bytes=9, cores=4, accelerator="cpu", running=("L1", "L2"),
                                                 trials=(RunningTrial("L1", "nexus-job-1", 7),)))
    result = WorkUp("c", "n1", result=TaskResult("L1", False, b"", "handed_back", "node n1 left while running it"))
    for msg in (beat, result):
        assert wire.up_from_pb(pb.WorkUp.FromString(wire.up_to_pb(msg).SerializeToString())) == msg


def test_down_messages_round_trip():
    for msg in (Assignment("L1", 7, b'{"task": "trial"}', 41), CancelTask("L1", "the job was cancelled")):
        assert wire.down_from_pb(pb.WorkDown.FromString(wire.down_to_pb(msg).SerializeToString())) == msg


def test_a_message_with_no_body_is_passed_as_nothing():
    assert wire.down_from_pb(pb.WorkDown()) is None
    assert wire.up_from_pb(pb.WorkUp(cluster="c", node_id="n1")) == WorkUp("c", "n1")
