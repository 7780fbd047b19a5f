"""Deleting jobs and models, retention, and the blob collector, on real nodes (issue 23)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import optuna

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node.study.proxy import NexusStorageProxy
from tests.clusters import caught_up, cluster_until, start_cluster
from tests.node.helpers import nexus, predict, rpc_error, stub, submit, watch_until, watch_until_end


def blob_files(data_dir: Path) -> set[str]:
    """The blob files in a node's store, by hash (blobs/store.py's layout)."""
    root = data_dir / "blobs"
    return {p.name for p in root.glob("??/*") if p.is_file() and len(p.name) == 64}


def disk_use(data_dir: Path) -> tuple[int, int]:
    """``(files, bytes)`` of the node's blob store (an ended job's trial predictions may go
    meanwhile: the collector removes them after its grace)."""
    sizes = []
    for sha in blob_files(data_dir):
        try:
            sizes.append((data_dir / "blobs" / sha[:2] / sha).stat().st_size)
        except FileNotFoundError:
            continue
    return len(sizes), sum(sizes)


def study_names(address: str) -> set[str]:
    host, port = address.rsplit(":", 1)
    return set(optuna.get_all_study_names(storage=NexusStorageProxy(host=host, port=int(port))))


def own_blobs_counted(address: str, predicate) -> pb.NodeInfo:
    """The node's own entry of its cluster view, once its blob figures satisfy ``predicate``
    (the view is sent again whenever its collector's figures change)."""
    view = cluster_until(address, lambda v: any(n.address == address and predicate(n) for n in v.nodes))
    return next(n for n in view.nodes if n.address == address)


def test_delete_removes_the_study_from_every_storage_service_and_the_blobs_from_every_disk(
        node_factory, insurance_csv):
    nodes = start_cluster(node_factory, 3, "--blob-gc-grace", "5")
    s = stub(nodes[0].address)
    job_id = submit(s, insurance_csv, "charges", max_trials=2).job_id
    done, _ = watch_until_end(s, job_id)
    assert done.state == pb.COMPLETED, done.message
    assert done.dataset_sha256 in set().union(*(blob_files(n.data_dir) for n in nodes))
    for n in nodes:   # `nexus cluster` counts each node's store as it is on disk
        caught_up(n.address)
        assert done.study_name in study_names(n.address)
        own_blobs_counted(n.address, lambda info, n=n: (info.blob_count, info.blob_bytes) == disk_use(n.data_dir))

    proc = nexus(nodes[1].address, "delete", job_id, "--json")   # on a node that is not the submitter
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"deleted": "job", "job_id": job_id, "study_deleted": True,
                                       "deleted_models": [done.model_id], "kept_models": []}

    for n in nodes:
        caught_up(n.address)
        assert done.study_name not in study_names(n.address)
        ns = stub(n.address)
        assert rpc_error(ns.GetJob, pb.GetJobRequest(job_id=job_id)).code() == grpc.StatusCode.NOT_FOUND
        assert rpc_error(predict, ns, done.model_id, b"age\n1\n").code() == grpc.StatusCode.NOT_FOUND
        # The only job is gone with its model: nothing on any disk is needed any more.
        own_blobs_counted(n.address, lambda info: info.blob_count == 0 and info.blob_bytes == 0)
        assert blob_files(n.data_dir) == set(), n.address
    again = nexus(nodes[2].address, "delete", job_id)
    assert again.returncode == 2 and f"no job or model {job_id!r}" in again.stderr


def test_a_running_job_is_refused_until_cancelled_and_bad_ids_say_what_to_fix(node_factory, insurance_csv):
    node = node_factory("d1", "--slots", "1").start()
    s = stub(node.address)
    slow = submit(s, insurance_csv, "charges", max_trials=200,
                  constraints_json='{"min_epochs": 150, "max_epochs": 150}').job_id
    watch_until(s, slow, lambda ev: ev.job.state == pb.SEARCHING)

    err = rpc_error(s.DeleteJob, pb.DeleteJobRequest(job_id=slow))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"cancel it first (`nexus cancel {slow}`)" in err.details()
    assert s.GetJob(pb.GetJobRequest(job_id=slow)).state == pb.SEARCHING
    assert rpc_error(s.DeleteJob, pb.DeleteJobRequest(job_id="job-nope")).code() == grpc.StatusCode.NOT_FOUND
    empty = rpc_error(s.DeleteJob, pb.DeleteJobRequest(job_id=""))
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT and "empty" in empty.details()
    assert rpc_error(s.DeleteModel, pb.DeleteModelRequest(model_id="model-nope")).code() == grpc.StatusCode.NOT_FOUND
    proc = nexus(node.address, "delete", "job-nope")
    assert proc.returncode == 2 and "no job or model 'job-nope'" in proc.stderr

    s.CancelJob(pb.CancelJobRequest(job_id=slow), timeout=60)
    proc = nexus(node.address, "delete", slow)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"deleted {slow}"
    assert slow not in {j.job_id for j in s.ListJobs(pb.ListJobsRequest()).jobs}


def test_retention_keeps_the_newest_ended_jobs_and_their_models(node_factory, insurance_csv):
    node = node_factory("r1", "--slots", "1", "--keep-jobs", "1").start()
    s = stub(node.address)
    first, _ = watch_until_end(s, submit(s, insurance_csv, "charges", max_trials=1).job_id)
    assert first.state == pb.COMPLETED, first.message
    assert [j.job_id for j in s.ListJobs(pb.ListJobsRequest()).jobs] == [first.job_id]   # the newest one
    second, _ = watch_until_end(s, submit(s, insurance_csv, "charges", max_trials=1).job_id)

    def jobs(view: pb.Cluster) -> list[str]:
        return [j.job_id for j in s.ListJobs(pb.ListJobsRequest()).jobs]
    cluster_until(node.address, lambda v: jobs(v) == [second.job_id])   # a deletion sends a new view
    caught_up(node.address)
    assert first.study_name not in study_names(node.address)
    # Retention keeps models: the first job's model still serves.
    kept = s.GetModel(pb.GetModelRequest(model_id=first.model_id))
    assert kept.job_id == first.job_id
    assert len(predict(s, first.model_id, insurance_csv.read_bytes())[1]) > 0
    model = json.loads(nexus(node.address, "delete", first.model_id, "--json").stdout)
    assert model == {"deleted": "model", "model_id": first.model_id, "job_id": first.job_id}
    assert [m.model_id for m in s.ListModels(pb.ListModelsRequest()).models] == [second.model_id]
