"""Disaster recovery on real processes: two of three voters lost for good, the survivor forced
into a one-voter cluster with ``nexus-node --force-new-cluster``, every job, model and study
kept, and new nodes joining it as usual.

Waiting is on server streams (WatchCluster, WatchJob) with deadlines, never on sleeps.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from tests.clusters import caught_up, cluster_until, finished, roles, study_of
from tests.conftest import free_port
from tests.node.helpers import predict, stub, submit, watch_until_end

pytestmark = pytest.mark.timeout(400)


def force_new_cluster(data_dir) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nexus_node.node.main", "--data-dir", str(data_dir),
                           "--force-new-cluster"], capture_output=True, text=True, timeout=60)


def test_a_survivor_forced_into_a_new_cluster_keeps_everything_and_the_others_rejoin(
        node_factory, insurance_csv, tmp_path):
    # Three voters and a non-voter (--voters 3 on four nodes). Three copies of every blob, so
    # that the two nodes left keep at least one of each (the log keeps the rest).
    ports = [free_port() for _ in range(4)]
    seeds = ",".join(f"127.0.0.1:{p}" for p in ports)
    nodes = [node_factory(f"n{i}", "--slots", "1", "--seeds", seeds, "--no-mdns", "--replicas", "3",
                          port=p).start()
             for i, p in enumerate(ports)]
    for node in nodes:
        cluster_until(node.address, lambda v: sorted(roles(v).values()) == sorted(
            [pb.COORDINATOR, pb.VOTER, pb.VOTER, pb.NON_VOTER]))
    job_id = submit(stub(nodes[0].address), insurance_csv, "charges", max_trials=2, seed=4).job_id
    job, _ = watch_until_end(stub(nodes[1].address), job_id)
    assert job.state == pb.COMPLETED, job.message
    trials = finished(study_of(nodes[2].address, job.study_name))
    assert len(trials) == 2

    view = stub(nodes[0].address).GetCluster(pb.GetClusterRequest())
    by_address = {n.address: n for n in nodes}
    voters = [by_address[n.address] for n in view.nodes if n.role in (pb.COORDINATOR, pb.VOTER)]
    learner = next(by_address[n.address] for n in view.nodes if n.role == pb.NON_VOTER)
    survivor, lost = voters[0], voters[1:]
    ids = {n.address: n.node_id for n in view.nodes}
    for n in lost:
        n.kill()   # gone for good: their data dirs are never used again
    # Without a majority of voters nothing commits: the cluster has no coordinator.
    cluster_until(survivor.address, lambda v: v.coordinator_id == "")
    assert survivor.stop(timeout=15) == 0

    # Never under a running node: the non-voter is still up.
    busy = force_new_cluster(learner.data_dir)
    assert busy.returncode == 2 and "in use" in busy.stderr
    empty = force_new_cluster(tmp_path / "nothing-here")
    assert empty.returncode == 2 and "nothing to recover" in empty.stderr
    forced = force_new_cluster(survivor.data_dir)
    assert forced.returncode == 0, forced.stderr
    assert "only voter" in forced.stdout and ids[survivor.address] in forced.stdout

    survivor.start()
    cluster_until(survivor.address, lambda v: v.coordinator_id == ids[survivor.address])
    # The non-voter, running all along, finds the cluster no longer lists it and joins again.
    view = cluster_until(survivor.address, lambda v: learner.address in roles(v))
    assert roles(view) == {survivor.address: pb.COORDINATOR, learner.address: pb.NON_VOTER}

    # Everything committed before is still there and served.
    s = stub(survivor.address)
    back = s.GetJob(pb.GetJobRequest(job_id=job_id))
    assert back.state == pb.COMPLETED and back.model_id == job.model_id
    rows = insurance_csv.read_text().splitlines(keepends=True)[:4]
    assert len(predict(s, job.model_id, "".join(rows).encode())[1]) == 3
    assert finished(study_of(survivor.address, job.study_name)) == trials

    # It commits again: a new job runs to the end, and the rejoined node has it too.
    again = submit(s, insurance_csv, "charges", max_trials=2, seed=5).job_id
    done = watch_until_end(s, again)[0]
    assert done.state == pb.COMPLETED, done.message
    caught_up(learner.address)
    assert watch_until_end(stub(learner.address), again)[0].model_id == done.model_id
    assert finished(study_of(learner.address, job.study_name)) == trials
