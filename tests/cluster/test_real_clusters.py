"""Real three-process clusters on loopback: formation from seeds, jobs submitted and watched on
any node, the coordinator killed with SIGKILL, a node restarted, a node without the token.

Waiting is on server streams (WatchCluster, WatchJob) with deadlines, never on sleeps.
"""

from __future__ import annotations

import time

import optuna
import pytest

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node.jobs.manager import RUNNING_LOST
from nexus_node.study.proxy import NexusStorageProxy
from tests.clusters import cluster_until, coordinator, finished, roles, start_cluster, study_of, three_voters
from tests.conftest import free_port
from tests.node.helpers import predict, stub, submit, watch_until, watch_until_end
from tests.node.trial_checks import assert_budget_kept

pytestmark = pytest.mark.timeout(400)


def test_three_nodes_form_one_cluster_and_any_node_takes_and_serves_jobs(node_factory, insurance_csv):
    nodes = start_cluster(node_factory)
    views = [stub(n.address).GetCluster(pb.GetClusterRequest()) for n in nodes]
    assert len({v.coordinator_id for v in views}) == 1 and views[0].coordinator_id
    assert all(len(v.nodes) == 3 and v.nodes[0].slots_total == 1 for v in views)
    lead = coordinator(nodes, views[0])
    first, second = [n for n in nodes if n is not lead]

    # Submitted to a non-coordinator, watched on the other one: the coordinator runs it.
    job_id = submit(stub(first.address), insurance_csv, "charges", max_trials=3, seed=3).job_id
    job, events = watch_until_end(stub(second.address), job_id)
    assert job.state == pb.COMPLETED, job.message
    assert sum(ev.kind == pb.TRIAL_FINISHED for ev in events) == 3
    trials = stub(first.address).ListTrials(pb.ListTrialsRequest(job_id=job_id)).trials
    # One slot per node, three trials at once: each node ran one.
    assert len(trials) == 3 and {t.node_id for t in trials} == {n.node_id for n in views[0].nodes}

    # Every node serves the model (the artifact is fetched from a node that holds it).
    rows = insurance_csv.read_text().splitlines(keepends=True)[:11]
    for node in nodes:
        _, preds = predict(stub(node.address), job.model_id, "".join(rows).encode())
        assert len(preds) == 10


def test_killing_the_coordinator_elects_another_and_its_job_completes(node_factory, insurance_csv):
    # No pruner: a trial ends PRUNED only when it is stopped, as a coordinator that did not
    # adopt the survivors' trials would stop them.
    nodes = start_cluster(node_factory, 3, "--pruner", "none")
    view = stub(nodes[0].address).GetCluster(pb.GetClusterRequest())
    lead = coordinator(nodes, view)
    survivors = [n for n in nodes if n is not lead]
    job_id = submit(stub(survivors[0].address), insurance_csv, "charges", max_trials=6, seed=5,
                    constraints_json='{"min_epochs": 30, "max_epochs": 30, "families": ["mlp"]}').job_id
    watch_until(stub(survivors[0].address), job_id, lambda ev: ev.kind == pb.TRIAL_FINISHED)
    study_name = stub(survivors[0].address).GetJob(pb.GetJobRequest(job_id=job_id)).study_name
    # What the cluster had committed before the kill, as a follower serves it.
    study = study_of(survivors[1].address, study_name)
    before = finished(study)
    assert before

    def trial_of(n: pb.NodeInfo) -> int | None:
        numbers = [int(r.rsplit("/", 1)[1]) for r in n.running
                   if r.startswith(job_id + "/") and r.rsplit("/", 1)[1].isdigit()]
        return numbers[0] if numbers else None

    # Every slot busy with a trial: the survivors' trials must outlive the coordinator.
    busy = cluster_until(lead.address, lambda v: len(v.nodes) == 3 and all(trial_of(n) is not None for n in v.nodes))
    on_survivors = {trial_of(n) for n in busy.nodes if n.node_id != view.coordinator_id}
    lead.kill()   # SIGKILL: no goodbye, no leadership transfer
    killed_at = time.monotonic()
    # A write to the study through a follower's StorageService, on the connection it had
    # before: it waits out the election and commits under the new coordinator.
    study.set_user_attr("after_failover", True)
    serving_s = time.monotonic() - killed_at
    print(f"study served again {serving_s:.2f} s after the coordinator's kill -9")
    new = cluster_until(survivors[0].address,
                        lambda v: v.coordinator_id not in ("", view.coordinator_id))
    assert new.term > view.term
    assert cluster_until(survivors[1].address, lambda v: v.coordinator_id == new.coordinator_id)
    assert study_of(survivors[0].address, study_name).user_attrs["after_failover"] is True

    job, _ = watch_until_end(stub(survivors[1].address), job_id)
    assert job.state == pb.COMPLETED, job.message
    trials = stub(survivors[1].address).ListTrials(pb.ListTrialsRequest(job_id=job_id)).trials
    # Only the dead node's trials are failed with the reason and re-run; those running on the
    # survivors were adopted by the new coordinator and finished where they ran, counted once.
    assert_budget_kept(trials, 6)
    failed = [t for t in trials if t.state == "FAIL"]
    assert all(t.message == RUNNING_LOST and t.node_id == view.coordinator_id for t in failed), trials
    by_number = {t.number: t for t in trials}
    adopted = [by_number[n] for n in on_survivors]
    assert all(t.state == "COMPLETE" for t in adopted), [(t.number, t.state, t.message) for t in adopted]
    assert any(t.node_id == new.coordinator_id and t.state in ("COMPLETE", "PRUNED") for t in trials)
    # No trial finished before the kill was lost or changed.
    after = finished(study_of(survivors[1].address, study_name))
    assert {k: after.get(k) for k in before} == before

    # The killed node comes back on its data dir and catches up with what it missed: the
    # job, its model and every trial of the study, as the survivors have them.
    lead.start()
    back = watch_until_end(stub(lead.address), job_id)[0]
    assert back.state == pb.COMPLETED and back.model_id == job.model_id
    assert cluster_until(lead.address, lambda v: v.coordinator_id == new.coordinator_id and len(v.nodes) == 3)
    caught_up = study_of(lead.address, study_name)
    assert finished(caught_up) == after and caught_up.user_attrs["after_failover"] is True


def a_worker_mid_trial(nodes, grace: str, max_trials: int, seed: int, insurance_csv):
    """A 3-node cluster (``--grace``) running a job of 60-epoch MLP trials, and a node other than
    the coordinator while it runs one of them: ``(coordinator, job_id, that node, its info)``."""
    start = start_cluster(nodes, 3, "--grace", grace)
    lead = coordinator(start, stub(start[0].address).GetCluster(pb.GetClusterRequest()))
    job_id = submit(stub(lead.address), insurance_csv, "charges", max_trials=max_trials, seed=seed,
                    constraints_json='{"min_epochs": 60, "max_epochs": 60, "families": ["mlp"]}').job_id

    def running_a_trial(n: pb.NodeInfo) -> bool:
        # A trial's label is JOB/NUMBER; JOB/prepare would be re-run without failing a trial.
        return n.role != pb.COORDINATOR and any(r.startswith(job_id + "/") and r.rsplit("/", 1)[1].isdigit()
                                                for r in n.running)

    busy = cluster_until(lead.address, lambda v: any(running_a_trial(n) for n in v.nodes))
    info = next(n for n in busy.nodes if running_a_trial(n))
    return lead, job_id, next(n for n in start if n.address == info.address), info


def test_a_killed_worker_s_trial_runs_again_on_another_node(node_factory, insurance_csv):
    lead, job_id, victim, victim_info = a_worker_mid_trial(node_factory, "2", 6, 7, insurance_csv)
    victim.kill()   # SIGKILL mid-trial: its heartbeats stop

    job, _ = watch_until_end(stub(lead.address), job_id)
    assert job.state == pb.COMPLETED, job.message
    trials = stub(lead.address).ListTrials(pb.ListTrialsRequest(job_id=job_id)).trials
    retries = assert_budget_kept(trials, 6)
    by_number = {t.number: t for t in trials}
    lost = [t for t in trials if t.state == "FAIL"]
    assert lost and all(t.node_id == victim_info.node_id and "missed heartbeats" in t.message for t in lost), (victim_info.node_id, [(t.number, t.state, t.node_id, t.message, t.retry_of if t.HasField("retry_of") else None) for t in trials])
    for r in retries:   # re-run elsewhere
        assert r.node_id != victim_info.node_id and by_number[r.retry_of].node_id == victim_info.node_id


def test_a_node_without_the_token_is_never_admitted(node_factory, tmp_path):
    token = tmp_path / "token"
    token.write_text("cluster-secret\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-secret\n")
    ports = [free_port() for _ in range(3)]
    seeds = ",".join(f"127.0.0.1:{p}" for p in ports)
    common = ("--slots", "1", "--seeds", seeds, "--no-mdns")
    a = node_factory("a", *common, "--token-file", str(token), port=ports[0]).start()
    b = node_factory("b", *common, "--token-file", str(token), port=ports[1]).start()
    intruder = node_factory("x", *common, "--token-file", str(wrong), port=ports[2]).start()
    view = cluster_until(a.address, lambda v: len(v.nodes) == 2, token="cluster-secret")
    assert intruder.address not in roles(view)
    # The intruder, refused by both, founded a cluster of its own.
    alone = stub(intruder.address, "not-the-secret").GetCluster(pb.GetClusterRequest())
    assert list(roles(alone)) == [intruder.address]
    assert roles(stub(b.address, "cluster-secret").GetCluster(pb.GetClusterRequest())) == roles(view)


def test_a_stopped_coordinator_hands_over_and_a_restarted_cluster_has_everything(node_factory, insurance_csv):
    nodes = start_cluster(node_factory)
    view = stub(nodes[0].address).GetCluster(pb.GetClusterRequest())
    job_id = submit(stub(nodes[1].address), insurance_csv, "charges", max_trials=2, seed=2).job_id
    job, _ = watch_until_end(stub(nodes[2].address), job_id)
    assert job.state == pb.COMPLETED, job.message

    study_name = job.study_name
    study = study_of(nodes[0].address, study_name)
    trials_before = finished(study)
    # A study of the user's own beside the job's (a job's study is written only by the cluster).
    host, port = nodes[0].address.rsplit(":", 1)
    notes = optuna.create_study(study_name="notes", storage=NexusStorageProxy(host=host, port=int(port)))
    notes.set_user_attr("note", "kept")
    assert len(trials_before) == 2

    lead = coordinator(nodes, view)
    # SIGTERM: a graceful leave hands leadership to an up-to-date voter first, and the node
    # exits by itself (status 0) rather than being killed after the deadline.
    assert lead.stop(timeout=15) == 0
    survivor = next(n for n in nodes if n is not lead)
    cluster_until(survivor.address, lambda v: v.coordinator_id not in ("", view.coordinator_id))
    assert "handed leadership to" in lead.log.read_text()

    for n in nodes:
        assert n.stop(timeout=15) in (0, None)
    for n in nodes:   # a clean stop ends the peers' streams cleanly: no error, no traceback
        assert "Traceback" not in n.log.read_text(), n.log.read_text()[-3000:]
    for n in nodes:   # the whole cluster comes back from its data dirs
        n.start()
    for n in nodes:
        cluster_until(n.address, three_voters)
        back = stub(n.address).GetJob(pb.GetJobRequest(job_id=job_id))
        assert back.state == pb.COMPLETED and back.model_id == job.model_id
        rows = insurance_csv.read_text().splitlines(keepends=True)[:4]
        assert len(predict(stub(n.address), job.model_id, "".join(rows).encode())[1]) == 3
        back_study = study_of(n.address, study_name)   # the study too, trial by trial
        assert finished(back_study) == trials_before
        assert study_of(n.address, "notes").user_attrs == {"note": "kept"}


def test_a_worker_stopped_with_sigterm_hands_back_its_trial_at_once(node_factory, insurance_csv):
    # A grace of 60 s: only the hand-back, not missed heartbeats, can re-run the trial before
    # the job ends.
    lead, job_id, leaver, leaver_info = a_worker_mid_trial(node_factory, "60", 4, 11, insurance_csv)
    assert leaver.stop(timeout=15) == 0

    job, _ = watch_until_end(stub(lead.address), job_id)
    assert job.state == pb.COMPLETED, job.message
    trials = stub(lead.address).ListTrials(pb.ListTrialsRequest(job_id=job_id)).trials
    retries = assert_budget_kept(trials, 4)
    handed = [t for t in trials if t.state == "FAIL"]
    assert handed and all(t.node_id == leaver_info.node_id and t.message.endswith("left while running it")
                          for t in handed), [(t.number, t.node_id, t.message) for t in trials]
    assert all(r.node_id != leaver_info.node_id for r in retries)


def test_an_ensemble_s_members_refit_on_several_nodes_at_once(node_factory, insurance_csv):
    """Finalize selects on one node, then each member refits as a task of its own, all at
    once: on three one-slot nodes, two members or more refit on different nodes."""
    nodes = start_cluster(node_factory)
    view = stub(nodes[0].address).GetCluster(pb.GetClusterRequest())
    job_id = submit(stub(nodes[0].address), insurance_csv, "charges", max_trials=8, seed=3).job_id
    job, _ = watch_until_end(stub(nodes[1].address), job_id)
    assert job.state == pb.COMPLETED, job.message
    assert len(job.members) >= 2, job.model_selection
    where = [m.node_id for m in job.members]
    assert set(where) <= {n.node_id for n in view.nodes} and len(set(where)) >= 2, where
    model = stub(nodes[2].address).GetModel(pb.GetModelRequest(model_id=job.model_id))
    assert [(m.trial, m.node_id) for m in model.members] == [(m.trial, m.node_id) for m in job.members]
    rows = insurance_csv.read_text().splitlines(keepends=True)[:4]
    assert len(predict(stub(nodes[2].address), job.model_id, "".join(rows).encode())[1]) == 3
