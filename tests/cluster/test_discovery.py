"""Discovery wired into real node processes on loopback: seeds and mDNS form one cluster;
another cluster name is never admitted; the dashboard's offer.

Waiting is on ``WatchCluster`` (the node re-sends its view whenever membership, the leader or
the peer directory changes) with a deadline, never on sleeps.
"""

from __future__ import annotations

import uuid

import grpc

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_tui.discovery import browse
from tests.conftest import free_port
from tests.node.helpers import stub

DEADLINE_S = 15.0


def discovered(cluster: pb.Cluster) -> set[tuple[str, str, str]]:
    return {(p.node_id, p.address, p.source) for p in cluster.discovered}


def watch_until(address: str, predicate) -> pb.Cluster:
    """The first view of the node at ``address`` that satisfies ``predicate``."""
    last = None
    try:
        for last in stub(address).WatchCluster(pb.WatchClusterRequest(), timeout=DEADLINE_S):
            if predicate(last):
                return last
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
    raise AssertionError(f"no such view within {DEADLINE_S} s; last: {last}")


def members(view: pb.Cluster) -> dict[str, int]:
    return {n.address: n.role for n in view.nodes}


def test_seeds_form_one_cluster_without_multicast(node_factory):
    port_a, port_b = free_port(), free_port()
    seeds = f"127.0.0.1:{port_a},127.0.0.1:{port_b}"   # the same list on every node
    a = node_factory("a", "--slots", "1", "--seeds", seeds, "--no-mdns", port=port_a).start()
    b = node_factory("b", "--slots", "1", "--seeds", seeds, "--no-mdns", port=port_b).start()
    for node in (a, b):
        view = watch_until(node.address, lambda v: len(v.nodes) == 2)
        # Two nodes: one voter (the coordinator) and one non-voter; members are not "discovered".
        assert sorted(members(view).values()) == [pb.COORDINATOR, pb.NON_VOTER]
        assert not view.discovered
    views = [stub(n.address).GetCluster(pb.GetClusterRequest()) for n in (a, b)]
    assert views[0].coordinator_id == views[1].coordinator_id != ""


def test_nodes_announced_on_loopback_find_each_other_and_the_dashboard_offers_them(node_factory):
    lab, other = f"lab-{uuid.uuid4().hex[:6]}", f"other-{uuid.uuid4().hex[:6]}"
    # A wider join window than the default 2 s: on a loaded machine mDNS can take longer to
    # resolve a peer, and a node that hears nobody in its window founds a cluster of its own.
    announce = ("--slots", "1", "--advertise-host", "127.0.0.1", "--join-window", "8")
    a = node_factory("a", *announce, "--cluster", lab).start()
    b = node_factory("b", *announce, "--cluster", lab).start()
    c = node_factory("c", *announce, "--cluster", other).start()
    # Bound to loopback without --advertise-host: a dev node announces nothing.
    quiet = node_factory("quiet", "--slots", "1", "--cluster", lab).start()

    # a and b found each other by mDNS alone and form one cluster; c (another name) is in
    # neither, and has a cluster of its own.
    for node in (a, b):
        view = watch_until(node.address, lambda v: set(members(v)) == {a.address, b.address})
        assert c.address not in {p.address for p in view.discovered}
    assert set(members(stub(c.address).GetCluster(pb.GetClusterRequest()))) == {c.address}
    quiet_view = stub(quiet.address).GetCluster(pb.GetClusterRequest())
    assert set(members(quiet_view)) == {quiet.address} and not quiet_view.discovered

    # nexus-tui's connect screen browses the same service type.
    offered = set(browse(timeout=2.0))
    assert {a.address, b.address, c.address} <= offered and quiet.address not in offered

