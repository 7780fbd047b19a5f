"""Discovery wired into real node processes on loopback: seeds, mDNS, the dashboard's offer.

The mesh is not wired into the node yet, so peers appear in ``Cluster.discovered``, never in
``Cluster.nodes``. Waiting is on ``WatchCluster`` (the node re-sends its view whenever the
peer directory changes) with a deadline, never on sleeps.
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


def test_seeds_are_listed_without_multicast_and_a_node_skips_its_own_address(node_factory):
    port_a, port_b = free_port(), free_port()
    seeds = f"127.0.0.1:{port_a},127.0.0.1:{port_b}"   # the same list on every node
    a = node_factory("a", "--slots", "1", "--seeds", seeds, "--no-mdns", port=port_a).start()
    b = node_factory("b", "--slots", "1", "--seeds", seeds, "--no-mdns", port=port_b).start()
    for node, other in ((a, b), (b, a)):
        view = stub(node.address).GetCluster(pb.GetClusterRequest())
        # A seed is an address until the peer is identified (Hello, once the mesh is wired).
        assert discovered(view) == {("", other.address, "seed")}
        assert [n.address for n in view.nodes] == [node.address]   # candidates, not members


def test_nodes_announced_on_loopback_find_each_other_and_the_dashboard_offers_them(node_factory):
    lab, other = f"lab-{uuid.uuid4().hex[:6]}", f"other-{uuid.uuid4().hex[:6]}"
    announce = ("--slots", "1", "--advertise-host", "127.0.0.1")
    a = node_factory("a", *announce, "--cluster", lab).start()
    b = node_factory("b", *announce, "--cluster", lab).start()
    c = node_factory("c", *announce, "--cluster", other).start()
    # Bound to loopback without --advertise-host: a dev node announces nothing.
    quiet = node_factory("quiet", "--slots", "1", "--cluster", lab).start()
    ids = {n: stub(n.address).GetCluster(pb.GetClusterRequest()).nodes[0].node_id for n in (a, b, c)}

    view = watch_until(b.address, lambda v: (ids[a], a.address, "mdns") in discovered(v))
    assert ids[c] not in {p.node_id for p in view.discovered}
    watch_until(a.address, lambda v: discovered(v) == {(ids[b], b.address, "mdns")})
    watch_until(c.address, lambda v: not v.discovered)
    assert not stub(quiet.address).GetCluster(pb.GetClusterRequest()).discovered

    # nexus-tui's connect screen browses the same service type.
    offered = set(browse(timeout=2.0))
    assert {a.address, b.address, c.address} <= offered and quiet.address not in offered

    # A node that stops says goodbye (RFC 6762 §10.1): its peers drop it at once.
    a.stop()
    watch_until(b.address, lambda v: ids[a] not in {p.node_id for p in v.discovered})

