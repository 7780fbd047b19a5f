"""Credentials on a real three-process cluster whose members share a peer secret that no client
holds: a job runs end to end (the runners use the peer secret), client tokens of every role are
kept out of PeerService and RunnerService on every node, and a token revoked on one node is
refused on all of them.

Waiting is on server streams and on calls retried until a deadline, never on sleeps.
"""

from __future__ import annotations

import json
import time

import grpc
import optuna
import pytest

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node._generated.nexus.v1 import peer_pb2, peer_pb2_grpc, runner_pb2_grpc
from nexus_node.net.auth import secure_channel
from nexus_node.study.proxy import NexusStorageProxy
from tests.clusters import cluster_until, three_voters
from tests.conftest import NodeProcess, free_port
from tests.node.helpers import rpc_error, stub, submit, watch_until_end
from tests.node.trial_checks import assert_budget_kept

ADMIN = "admin-token-of-the-cluster"
PEER_SECRET = "peer-secret-nobody-else-has"
DEADLINE_S = 30.0
pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, ):
    base = tmp_path_factory.mktemp("creds")
    (base / "token").write_text(ADMIN + "\n")
    (base / "peer").write_text(PEER_SECRET + "\n")
    ports = [free_port() for _ in range(3)]
    seeds = ",".join(f"127.0.0.1:{p}" for p in ports)
    nodes = [NodeProcess(base / f"n{i}", "--slots", "1", "--seeds", seeds, "--no-mdns",
                         "--token-file", str(base / "token"), "--peer-secret-file", str(base / "peer"),
                         port=p).start() for i, p in enumerate(ports)]
    try:
        for node in nodes:
            cluster_until(node.address, three_voters, token=ADMIN)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="module")
def finished_job(cluster, insurance_csv):
    """A job run to the end on the cluster: its runners wrote every trial under the peer secret."""
    job_id = submit(stub(cluster[0].address, ADMIN), insurance_csv, "charges", max_trials=2, seed=5).job_id
    job, _ = watch_until_end(stub(cluster[1].address, ADMIN), job_id)
    assert job.state == pb.COMPLETED, job.message
    return job


def _client_tokens(address: str) -> dict[str, str]:
    admin = stub(address, ADMIN)
    out = {"admin-token": ADMIN}
    for role in ("read", "submit", "admin"):
        name = f"attacker-{role}-{time.monotonic_ns()}"
        out[role] = admin.CreateToken(pb.CreateTokenRequest(name=name, role=pb.TokenRole.Value(role.upper())),
                                      timeout=10).secret
    return out


def _state(nodes) -> list:
    """What an attack must not change: every node's jobs, models, study and membership."""
    out = []
    for n in nodes:
        s = stub(n.address, ADMIN)
        jobs = sorted((j.job_id, j.state, j.best_value, j.created_at) for j in s.ListJobs(pb.ListJobsRequest()).jobs)
        models = sorted((m.model_id, m.artifact_sha256) for m in s.ListModels(pb.ListModelsRequest()).models)
        host, port = n.address.split(":")
        storage = NexusStorageProxy(host=host, port=int(port), token=ADMIN)
        studies = sorted((st.study_name, st.n_trials, st.best_trial.value if st.best_trial else None)
                         for st in optuna.get_all_study_summaries(storage))
        view = s.GetCluster(pb.GetClusterRequest())
        out.append((jobs, models, studies, sorted((x.node_id, x.role) for x in view.nodes)))
    return out


def test_a_job_runs_with_the_peer_secret_apart_from_every_client_token(finished_job, cluster):
    trials = stub(cluster[2].address, ADMIN).ListTrials(pb.ListTrialsRequest(job_id=finished_job.job_id)).trials
    # Every trial the runners ran was written through RunnerService and Optuna's StorageService.
    ran = [t for t in trials if t.state != "WAITING"]
    assert all(t.state in ("COMPLETE", "PRUNED") for t in ran), [(t.state, t.message) for t in ran]
    assert_budget_kept(ran, 2)


def test_client_tokens_cannot_speak_for_a_member_on_any_node(cluster, finished_job):
    before = _state(cluster)
    tokens = _client_tokens(cluster[0].address)
    leader_view = stub(cluster[0].address, ADMIN).GetCluster(pb.GetClusterRequest())
    lead = leader_view.coordinator_id
    forged_job = {"kind": "records", "body": {"op": "put_job", "job": {"job_id": "forged", "state": "COMPLETED"}}}
    heartbeat = {"type": "MsgHeartbeat", "src": lead, "dst": "", "term": 2 ** 63 - 1, "commit": 0}
    for node in cluster:
        dst = next(x.node_id for x in leader_view.nodes if x.address == node.address)
        for name, secret in tokens.items():
            channel = secure_channel(node.address, secret)
            peer = peer_pb2_grpc.PeerServiceStub(channel)
            runner = runner_pb2_grpc.RunnerServiceStub(channel)
            attacks = {
                # One RPC that once destroyed a cluster: a heartbeat from the leader's id with a
                # term no SQLite INTEGER holds.
                "StepStream": lambda: peer.StepStream(iter([peer_pb2.RaftBatch(
                    cluster="nexus", from_node=lead,
                    messages=[json.dumps({**heartbeat, "dst": dst}).encode()],
                    proposals=[peer_pb2.Proposal(proposal_id="forged", data=json.dumps(forged_job).encode())])]),
                    timeout=10),
                "Join": lambda: peer.Join(peer_pb2.JoinRequest(cluster="nexus", node_id="node-fake",
                                                               address="127.0.0.1:1"), timeout=10),
                # A fake worker: its work stream, the raw dataset, a forged result.
                "Work": lambda: list(peer.Work(iter([peer_pb2.WorkUp(
                    cluster="nexus", node_id="node-fake", heartbeat=peer_pb2.Heartbeat(slots=4))]), timeout=10)),
                "FetchBlob": lambda: list(peer.FetchBlob(peer_pb2.FetchBlobRequest(
                    cluster="nexus", sha256=finished_job.dataset_sha256), timeout=10)),
                "FinishTrial": lambda: runner.FinishTrial(pb.FinishTrialRequest(
                    trial_id=0, state="COMPLETE", value=0.999999), timeout=10),
                "ReportSteps": lambda: runner.ReportSteps(pb.ReportStepsRequest(
                    trial_id=0, steps=[pb.TrialStep(step=0, value=0.999999)]), timeout=10),
            }
            for what, attack in attacks.items():
                e = rpc_error(attack)
                assert e.code() == grpc.StatusCode.PERMISSION_DENIED, (node.address, name, what, e.details())
                assert "peer secret" in e.details()
    # Nothing moved: the same jobs, models, studies and members on every node, all serving.
    assert _state(cluster) == before
    for node in cluster:
        assert node.proc.poll() is None


def _until(predicate, what: str, timeout: float = DEADLINE_S) -> float:
    """Seconds until ``predicate()`` holds; fails after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)   # polling a remote condition, not standing in for an event
    return time.monotonic() - start


def _refused(address: str, secret: str) -> bool:
    try:
        stub(address, secret).ListJobs(pb.ListJobsRequest(), timeout=5)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e.details()
        return True
    return False


def test_a_token_made_on_one_node_works_on_all_and_a_revoked_one_on_none(cluster, insurance_csv):
    first, second, third = cluster
    admin = stub(first.address, ADMIN)
    secret = admin.CreateToken(pb.CreateTokenRequest(name="dashboard", role=pb.READ), timeout=10).secret
    for node in (second, third):
        _until(lambda: not _refused(node.address, secret), f"the token reaching {node.address}")
    # A watch opened with the token before its revocation sends nothing after it.
    watch = stub(third.address, secret).WatchCluster(pb.WatchClusterRequest(), timeout=DEADLINE_S)
    assert next(watch).nodes
    # A read token cannot submit, on any node.
    for node in cluster:
        e = rpc_error(submit, stub(node.address, secret), insurance_csv, "charges", max_trials=1)
        assert e.code() == grpc.StatusCode.PERMISSION_DENIED and "'submit' role" in e.details()

    admin.RevokeToken(pb.RevokeTokenRequest(name="dashboard"), timeout=10)
    assert _refused(first.address, secret)   # applied on the node that answered
    took = {node.address: _until(lambda: _refused(node.address, secret), f"the revocation reaching {node.address}")
            for node in (second, third)}
    print(f"revocation refused on the other nodes after {took}")
    # Any cluster change makes the watch send again: it is refused instead.
    submit(stub(second.address, ADMIN), insurance_csv, "charges", max_trials=1, seed=9)
    with pytest.raises(grpc.RpcError) as info:
        for _ in watch:
            pass
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in info.value.details()


def test_a_submit_token_writes_studies_of_its_own_but_never_a_job_s(cluster, finished_job):
    """A submit token may use the cluster as an Optuna server, but a job's study belongs to the
    runners: a forged COMPLETE trial there would be the job's best and the model retrained from
    it (issue 18, "a fake worker")."""
    before = _state(cluster)
    secret = _client_tokens(cluster[0].address)["submit"]
    for node in cluster:
        host, port = node.address.split(":")
        storage = NexusStorageProxy(host=host, port=int(port), token=secret)
        study = optuna.load_study(study_name=finished_job.study_name, storage=storage)
        done = study.trials[0]
        forgeries = {
            "a finished trial": lambda: study.add_trial(optuna.trial.create_trial(
                params=done.params, distributions=done.distributions, value=0.999999)),
            "a trial's attribute": lambda: storage.set_trial_user_attr(done._trial_id, "config", {}),
            "the study's attribute": lambda: study.set_user_attr("forged", True),
            "the study itself": lambda: optuna.delete_study(study_name=finished_job.study_name, storage=storage),
            "a study under the jobs' prefix": lambda: optuna.create_study(study_name="nexus-job-fake", storage=storage),
        }
        for what, forge in forgeries.items():
            with pytest.raises(grpc.RpcError) as info:
                forge()
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, (node.address, what, info.value.details())
            assert "belongs to a Nexus job" in info.value.details()
        # Its own study: a plain Optuna server.
        own = optuna.create_study(study_name=f"mine-{port}", storage=storage, direction="maximize")
        own.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        assert len(own.trials) == 2 and own.best_value is not None
    def finished(state):   # the finished job, its model and its study (another job may still run)
        return [([j for j in jobs if j[0] == finished_job.job_id],
                 [m for m in models if m[0] == finished_job.model_id],
                 [st for st in studies if st[0] == finished_job.study_name]) for jobs, models, studies, _ in state]

    assert finished(_state(cluster)) == finished(before)

