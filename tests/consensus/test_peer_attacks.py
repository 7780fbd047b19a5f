"""Issue 18's attacks on a real 3-node cluster, made by a caller holding the cluster token (the
peer secret, with only ``--token-file``): each is refused or dropped, and the cluster goes on
serving with its terms in range and its records unforged.

One cluster serves every test of the module (each attack leaves it as it was, which is what the
checks after each one show). Waiting is on observable conditions with deadlines: a write that
commits after the attack's messages were queued (a node's inbox is one FIFO queue, so once a
later write is applied there the attack was handled), cluster views, log lines written before
that write.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Iterator

import grpc
import optuna
import pytest

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node._generated.nexus.v1 import peer_pb2 as ppb
from nexus_node._generated.nexus.v1 import peer_pb2_grpc
from nexus_node.consensus.raft import MsgApp, MsgHeartbeat, MsgTimeoutNow, message_to_dict
from nexus_node.consensus.raft.messages import MAX_TERM
from nexus_node.consensus.state import encode_command
from nexus_node.consensus.transport import PROTOCOL_VERSION
from nexus_node.jobs.records import COMPLETED, JobRecord, JobSpecRecord
from nexus_node.net.auth import secure_channel
from nexus_node.study.proxy import NexusStorageProxy
from tests.clusters import cluster_until, three_voters
from tests.conftest import NodeProcess, free_port
from tests.node.helpers import stub

pytestmark = pytest.mark.timeout(300)

TOKEN = "attack-test-secret"
CLUSTER = "nexus"


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[NodeProcess]]:
    base = tmp_path_factory.mktemp("attacks")
    token = base / "token"
    token.write_text(TOKEN + "\n")
    ports = [free_port() for _ in range(3)]
    seeds = ",".join(f"127.0.0.1:{p}" for p in ports)
    started: list[NodeProcess] = []
    try:
        for i, port in enumerate(ports):
            started.append(NodeProcess(base / f"n{i}", "--slots", "1", "--seeds", seeds, "--no-mdns",
                                       "--token-file", str(token), port=port).start())
        for n in started:
            cluster_until(n.address, three_voters, token=TOKEN)
        yield started
    finally:
        for n in started:
            n.stop()


class View:
    """The cluster as one node sees it: ids by address, the coordinator, the term."""

    def __init__(self, nodes: list[NodeProcess]) -> None:
        self.nodes = nodes
        v = cluster_until(nodes[0].address, lambda v: three_voters(v) and bool(v.coordinator_id), token=TOKEN)
        self.term = v.term
        self.ids = {n.address: n.node_id for n in v.nodes}
        self.leader_id = v.coordinator_id
        self.leader = next(n for n in nodes if self.ids[n.address] == self.leader_id)
        self.followers = [n for n in nodes if n is not self.leader]

    def id(self, node: NodeProcess) -> str:
        return self.ids[node.address]


def peer(node: NodeProcess) -> peer_pb2_grpc.PeerServiceStub:
    return peer_pb2_grpc.PeerServiceStub(secure_channel(node.address, TOKEN))


def encoded(raw: dict) -> bytes:
    return json.dumps(raw, separators=(",", ":")).encode()


def step(node: NodeProcess, from_node: str, messages: list[dict] = (), proposals: list[ppb.Proposal] = ()
         ) -> tuple[grpc.StatusCode, str]:
    """One batch on a ``PeerService.StepStream`` to ``node``; returns its status and details."""
    try:
        peer(node).StepStream(iter([ppb.RaftBatch(cluster=CLUSTER, from_node=from_node,
                                                  messages=[encoded(m) for m in messages],
                                                  proposals=list(proposals))]),
                              timeout=10)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def study_write(node: NodeProcess) -> None:
    """A write through ``node``'s Optuna StorageService, which returns once it is committed and
    applied there: everything the node queued before it was handled first."""
    host, port = node.address.rsplit(":", 1)
    optuna.create_study(study_name=f"barrier-{uuid.uuid4().hex[:8]}",
                        storage=NexusStorageProxy(host=host, port=int(port), token=TOKEN))


def persisted_terms(data_dir: Path) -> tuple[int, int]:
    """(hard state term, highest entry term) in a node's raft.db, read while it runs."""
    db = sqlite3.connect(f"file:{data_dir / 'raft.db'}?mode=ro", uri=True)
    try:
        (hard,) = db.execute("SELECT term FROM raft_hard_state").fetchone()
        (top,) = db.execute("SELECT COALESCE(MAX(term), 0) FROM raft_log").fetchone()
    finally:
        db.close()
    return hard, top


def assert_serving(nodes: list[NodeProcess], forged_jobs: tuple[str, ...] = ()) -> View:
    """No node exited, the cluster has its coordinator, a write commits through every node,
    terms on disk are in range, and every node lists its jobs without the forged ones."""
    for n in nodes:
        assert n.proc is not None and n.proc.poll() is None, f"{n.address} exited: {n.log.read_text()[-3000:]}"
    view = View(nodes)
    for n in nodes:
        study_write(n)
    for n in nodes:
        hard, top = persisted_terms(n.data_dir)
        assert 0 < hard < 2**20 and top <= hard, (n.address, hard, top)
        jobs = stub(n.address, TOKEN).ListJobs(pb.ListJobsRequest(), timeout=10).jobs
        assert not {j.job_id for j in jobs} & set(forged_jobs)
    for n in nodes:
        assert "stops taking part" not in n.log.read_text()
    return view


def test_a_heartbeat_with_a_term_past_sqlite_s_range_is_refused_everywhere(nodes):
    view = View(nodes)
    for term in (2**63 - 1, 2**64, MAX_TERM + 1):
        for target in nodes:
            sender = view.id(next(n for n in nodes if n is not target))   # a member's name
            raw = message_to_dict(MsgHeartbeat(sender, view.id(target), 0, 0)) | {"term": term}
            code, details = step(target, sender, [raw])
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "out of range" in details, (code, details)
    after = assert_serving(nodes)
    assert after.term < 2**20


def test_forged_records_handed_over_in_a_raft_batch_are_never_committed(nodes):
    view = View(nodes)
    follower = view.id(view.followers[0])
    done = JobRecord(job_id="job-forged-done", spec=JobSpecRecord(target="charges"), state=COMPLETED,
                     created_at=1.0, node_id=follower, best_value=0.9999, test_metrics={"r2": 0.9999})
    yesterday = JobRecord(job_id="job-forged-time", spec=JobSpecRecord(target="charges"),
                          node_id=follower).to_dict() | {"created_at": "yesterday"}
    writes = [
        ("finished by a forger", {"op": "put_job", "job": done.to_dict()}),
        ("with a string for a time", {"op": "put_job", "job": yesterday}),
        ("a model", {"op": "put_model", "model": {"model_id": "m-forged"}}),
        ("another node's blob", {"op": "put_blob", "sha256": "0" * 64, "size": 1, "kind": "model",
                                 "holder": view.leader_id}),
    ]
    for what, body in writes:
        proposal = ppb.Proposal(proposal_id=uuid.uuid4().hex, data=encode_command("records", body))
        code, details = step(view.leader, follower, proposals=[proposal])
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details, (what, code, details)
    assert_serving(nodes, forged_jobs=("job-forged-done", "job-forged-time"))


def test_a_node_that_is_not_a_member_is_refused(nodes):
    view = View(nodes)
    intruder = "node-intruder"
    forged_term = view.term + 1000
    for target in nodes:
        raw = message_to_dict(MsgHeartbeat(intruder, view.id(target), forged_term, 0))
        code, details = step(target, intruder, [raw])
        assert code == grpc.StatusCode.PERMISSION_DENIED and "not a member" in details, (code, details)
    proposal = ppb.Proposal(proposal_id=uuid.uuid4().hex,
                            data=encode_command("records", {"op": "cancel_job", "job_id": "job-x"}))
    code, _ = step(view.leader, intruder, proposals=[proposal])
    assert code == grpc.StatusCode.PERMISSION_DENIED
    # Its worker gets no work: the coordinator's Work stream refuses it.
    work = peer(view.leader).Work(iter([ppb.WorkUp(cluster=CLUSTER, node_id=intruder,
                                                   heartbeat=ppb.Heartbeat(slots=4))]), timeout=10)
    with pytest.raises(grpc.RpcError) as refused:
        list(work)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED and "non-member" in refused.value.details()
    after = assert_serving(nodes)
    assert after.term < forged_term


def test_an_append_contradicting_committed_entries_in_the_leader_s_name_is_dropped(nodes):
    view = View(nodes)
    target = view.followers[0]
    # Entry 1 (the founding configuration, term 1) is committed everywhere; this append says
    # the leader holds another term there, and would have told the node to wipe its data dir.
    raw = message_to_dict(MsgApp(view.leader_id, view.id(target), view.term, prev_index=1,
                                 prev_term=view.term, entries=(), commit=1))
    assert view.term > 1
    assert step(target, view.leader_id, [raw]) == (grpc.StatusCode.OK, "")
    study_write(target)   # handled after the append: the node still takes part
    assert "contradicting append dropped" in target.log.read_text()
    assert_serving(nodes)


def test_a_same_term_heartbeat_or_transfer_from_a_member_that_does_not_lead_is_ignored(nodes):
    view = View(nodes)
    target, liar = view.followers
    messages = [message_to_dict(MsgHeartbeat(view.id(liar), view.id(target), view.term, 0)),
                message_to_dict(MsgTimeoutNow(view.id(liar), view.id(target), view.term))]
    assert step(target, view.id(liar), messages) == (grpc.StatusCode.OK, "")
    study_write(target)
    text = target.log.read_text()
    assert "whose leader is" in text and "not the leader of term" in text
    assert_serving(nodes)
    # The target still follows the real leader: it was not diverted, and no election followed.
    mine = stub(target.address, TOKEN).GetCluster(pb.GetClusterRequest(), timeout=10)
    assert (mine.coordinator_id, mine.term) == (view.leader_id, view.term)


def wait_for_line(node: NodeProcess, text: str, timeout: float = 20.0) -> None:
    """Until ``node``'s log holds ``text`` (written by a check the node runs in the background)."""
    deadline = time.monotonic() + timeout
    while text not in node.log.read_text():
        assert time.monotonic() < deadline, f"{text!r} not in {node.address}'s log within {timeout} s"
        time.sleep(0.1)   # polling a file: there is nothing to block on


def test_a_hello_claiming_the_leader_s_id_from_elsewhere_does_not_move_it(nodes):
    view = View(nodes)
    target = view.followers[0]
    elsewhere = f"127.0.0.1:{free_port()}"   # where a forger would take the leader's messages
    peer(target).Hello(ppb.HelloRequest(node_id=view.leader_id, cluster=CLUSTER, address=elsewhere,
                                        protocol_version=PROTOCOL_VERSION), timeout=10)
    # The target dials the leader where it knows it; the leader answers, so nothing moves.
    wait_for_line(target, f"still answers at {view.leader.address}: address kept")
    study_write(target)   # handed to the leader at its real address, committed
    assert_serving(nodes)


def test_a_forged_member_record_does_not_move_a_member_that_still_answers(nodes):
    """A caller with the peer secret hands the leader a `member` record in a follower's name
    (a follower may record its own address, and "its own" is the batch's claimed sender): it
    commits, but no node's address book moves that follower while it answers where it is."""
    view = View(nodes)
    victim, other = view.followers
    elsewhere = f"127.0.0.1:{free_port()}"
    body = {"op": "member", "node_id": view.id(victim), "address": elsewhere}
    proposal = ppb.Proposal(proposal_id=uuid.uuid4().hex, data=encode_command("records", body))
    assert step(view.leader, view.id(victim), proposals=[proposal]) == (grpc.StatusCode.OK, "")
    for n in (view.leader, other):
        wait_for_line(n, f"still answers at {victim.address}: address kept")
        study_write(n)   # the leader still reaches the victim: a write commits with it
    assert_serving(nodes)
