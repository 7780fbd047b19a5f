"""Real multi-process clusters for the tests that need one: starting them, and waiting on their
views and studies (on server streams and writes with deadlines, never on sleeps)."""

from __future__ import annotations

import time

import grpc
import optuna

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node.study.proxy import NexusStorageProxy
from tests.conftest import free_port
from tests.node.helpers import stub

DEADLINE_S = 30.0


def cluster_until(address: str, predicate, timeout: float = DEADLINE_S, token: str | None = None,
                  tls=None) -> pb.Cluster:
    """The first cluster view of the node at ``address`` that satisfies ``predicate``."""
    last = None
    try:
        for last in stub(address, token, tls).WatchCluster(pb.WatchClusterRequest(), timeout=timeout):
            if predicate(last):
                return last
    except grpc.RpcError as exc:
        if exc.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
            raise
    raise AssertionError(f"no such view of {address} within {timeout} s; last: {last}")


def roles(view: pb.Cluster) -> dict[str, int]:
    return {n.address: n.role for n in view.nodes}


def three_voters(view: pb.Cluster) -> bool:
    r = sorted(roles(view).values())
    return r == [pb.COORDINATOR, pb.VOTER, pb.VOTER]


def start_cluster(node_factory, n: int = 3, *extra: str):
    ports = [free_port() for _ in range(n)]
    seeds = ",".join(f"127.0.0.1:{p}" for p in ports)   # the same list on every node
    nodes = [node_factory(f"n{i}", "--slots", "1", "--seeds", seeds, "--no-mdns", *extra, port=p).start()
             for i, p in enumerate(ports)]
    for node in nodes:
        cluster_until(node.address, three_voters)
    return nodes


def coordinator(nodes, view: pb.Cluster):
    lead = next(n.address for n in view.nodes if n.role == pb.COORDINATOR)
    return next(n for n in nodes if n.address == lead)


def study_of(address: str, study_name: str) -> optuna.Study:
    """The job's study read through the node's own Optuna ``StorageService``."""
    host, port = address.rsplit(":", 1)
    return optuna.load_study(study_name=study_name, storage=NexusStorageProxy(host=host, port=int(port)))


def caught_up(address: str) -> None:
    """Returns once the node at ``address`` has applied everything committed before now: a
    write through its StorageService returns only once applied there, after every earlier
    entry (its reads are local, and a node that just came back may still be catching up).
    The write goes to a study of the test's own: a job's study is written only by the cluster."""
    host, port = address.rsplit(":", 1)
    study = optuna.create_study(study_name="test-barrier", storage=NexusStorageProxy(host=host, port=int(port)),
                                load_if_exists=True)
    study.set_user_attr("barrier", time.time_ns())


def finished(study: optuna.Study) -> dict[int, tuple]:
    """Every finished trial of ``study`` as number -> (state, value, params)."""
    return {t.number: (t.state.name, t.value, t.params) for t in study.get_trials(deepcopy=False)
            if t.state.is_finished()}
