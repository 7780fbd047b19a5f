"""The cluster view is plain data inside the node and a ``nexus.v1.Cluster`` at the edge."""

from __future__ import annotations

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node.api import convert
from nexus_node.cluster.view import COORDINATOR, NON_VOTER, ClusterView, FoundPeer, MemberInfo


def test_a_member_survives_the_describe_round_trip():
    m = MemberInfo(node_id="n1", address="10.0.0.1:7070", role=NON_VOTER, term=7, last_contact=1.5e9,
                   slots_total=4, slots_busy=1, memory_total_bytes=8 << 30, memory_free_bytes=3 << 30,
                   accelerator="cpu", running=["job-a/3"], version="0.1.0", disk_free_bytes=1 << 30, disk_low=True)
    assert convert.member_from_pb(convert.member_to_pb(m)) == m
    assert convert.member_to_pb(m).role == pb.NON_VOTER
    # A member describing itself leaves its role to whoever asks.
    assert convert.member_from_pb(convert.member_to_pb(MemberInfo("n2", "a:1"))).role == ""


def test_the_cluster_view_becomes_the_wire_message():
    view = ClusterView("lab", "n1", 3, [MemberInfo("n1", "a:1", role=COORDINATOR, term=3)],
                       [FoundPeer("", "b:2", "seed", 10.0)])
    c = convert.cluster_to_pb(view)
    assert (c.cluster_name, c.coordinator_id, c.term) == ("lab", "n1", 3)
    assert [(n.node_id, n.role) for n in c.nodes] == [("n1", pb.COORDINATOR)]
    assert [(p.address, p.source, p.last_seen) for p in c.discovered] == [("b:2", "seed", 10.0)]
