"""Every bad input gets a status with a message that says what to fix; the node stays up
and nothing already stored changes."""

from __future__ import annotations

import grpc
import pytest

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from tests.node.helpers import predict_requests, rpc_error, stub, submit, submit_requests, watch_until_end

GOOD = b"a,b,y\n" + b"".join(b"%d,%d,%d\n" % (i, i % 3, i * 2) for i in range(40))


@pytest.fixture(scope="module")
def small_node(tmp_path_factory):
    from tests.conftest import NodeProcess

    node = NodeProcess(tmp_path_factory.mktemp("bad") / "node", "--slots", "1", "--max-upload-mb", "1").start()
    yield node
    node.stop()


@pytest.mark.parametrize("data, target, code, fragment", [
    (b"", "y", grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "y", grpc.StatusCode.INVALID_ARGUMENT, "not a CSV"),
    (GOOD, "price", grpc.StatusCode.INVALID_ARGUMENT, "'price' is not in the CSV"),
    (b"a,b,y\n" + b"1,2,\n" * 30, "y", grpc.StatusCode.INVALID_ARGUMENT, "empty in every row"),
    (b"a,b,y\n1,2,3\n", "y", grpc.StatusCode.INVALID_ARGUMENT, "at least 10"),
    (b"a,y\n" + b"1,2\n" * 600_000, "y", grpc.StatusCode.RESOURCE_EXHAUSTED, "limit of 1 MiB"),
])
def test_bad_uploads(small_node, data, target, code, fragment):
    s = stub(small_node.address)
    before = s.ListJobs(pb.ListJobsRequest()).jobs
    e = rpc_error(s.SubmitJob, submit_requests(pb.JobSpec(target=target), data), timeout=60)
    assert e.code() == code, e.details()
    assert fragment in e.details()
    assert s.ListJobs(pb.ListJobsRequest()).jobs == before
    blobs = [p for p in (small_node.data_dir / "blobs").rglob("*") if p.is_file() and "tmp" not in p.parts]
    assert all(p.stat().st_size < (1 << 20) for p in blobs)


def test_bad_specs(small_node):
    s = stub(small_node.address)
    cases = [
        (pb.JobSpec(target="y", metric="speed"), "unknown metric"),
        (pb.JobSpec(target="y", max_trials=-1), "max_trials"),
        (pb.JobSpec(target="y", constraints_json="{nope"), "not valid JSON"),
        (pb.JobSpec(target="y", drop_columns=["zz"]), "columns to drop"),
        (pb.JobSpec(target="y", time_budget_seconds=float("nan")), "time_budget_seconds"),
    ]
    for spec, fragment in cases:
        e = rpc_error(s.SubmitJob, submit_requests(spec, GOOD), timeout=60)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in e.details(), e.details()
    e = rpc_error(s.SubmitJob, iter([pb.SubmitJobRequest(chunk=GOOD)]), timeout=30)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "spec first" in e.details()
    # Nothing of the rejected uploads is left behind.
    assert list((small_node.data_dir / "blobs" / "tmp").iterdir()) == []


def test_unknown_ids(small_node):
    s = stub(small_node.address)
    for call, req in [
        (s.GetJob, pb.GetJobRequest(job_id="job-nope")),
        (s.CancelJob, pb.CancelJobRequest(job_id="job-nope")),
        (s.ListTrials, pb.ListTrialsRequest(job_id="job-nope")),
        (s.GetModel, pb.GetModelRequest(model_id="model-nope")),
        (s.WatchJob, pb.WatchJobRequest(job_id="job-nope")),
        (s.ExportModel, pb.ExportModelRequest(model_id="model-nope")),
    ]:
        e = rpc_error(call, req, timeout=10)
        assert e.code() == grpc.StatusCode.NOT_FOUND and "nope" in e.details()
    e = rpc_error(s.Predict, predict_requests("model-nope", GOOD), timeout=10)
    assert e.code() == grpc.StatusCode.NOT_FOUND


def test_predict_input_missing_a_training_column(small_node):
    s = stub(small_node.address)
    resp = submit(s, GOOD, "y", max_trials=1)
    job, _ = watch_until_end(s, resp.job_id)
    assert job.state == pb.COMPLETED, job.message
    e = rpc_error(s.Predict, predict_requests(job.model_id, b"a\n1\n2\n"), timeout=60)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'b'" in e.details()
    # extra columns are ignored, and the model still serves
    ok = list(s.Predict(predict_requests(job.model_id, b"b,a,extra\n1,2,x\n"), timeout=60))
    assert sum(len(r.predictions) for r in ok) == 1
    assert s.GetJob(pb.GetJobRequest(job_id=job.job_id)).state == pb.COMPLETED


def test_cancel_of_a_finished_job_is_refused(small_node):
    s = stub(small_node.address)
    done = [j for j in s.ListJobs(pb.ListJobsRequest()).jobs if j.state == pb.COMPLETED]
    assert done, "test_predict_input_missing_a_training_column leaves a completed job"
    e = rpc_error(s.CancelJob, pb.CancelJobRequest(job_id=done[0].job_id), timeout=10)
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "already ended" in e.details()


def test_bad_trial_writes_from_trial_code(small_node):
    s = stub(small_node.address)
    for req, code, fragment in [
        (pb.FinishTrialRequest(trial_id=12345, state="COMPLETE", value=1.0), grpc.StatusCode.NOT_FOUND, "12345"),
        (pb.FinishTrialRequest(trial_id=0, state="DONE"), grpc.StatusCode.INVALID_ARGUMENT, "one of COMPLETE"),
        (pb.FinishTrialRequest(trial_id=0, state="COMPLETE", value=float("nan")),
         grpc.StatusCode.INVALID_ARGUMENT, "a number"),
        (pb.FinishTrialRequest(trial_id=0, state="FAIL", user_attrs_json="[1]"),
         grpc.StatusCode.INVALID_ARGUMENT, "JSON object"),
        (pb.FinishTrialRequest(trial_id=0, state="FAIL", user_attrs_json="{"), grpc.StatusCode.INVALID_ARGUMENT, "not JSON"),
    ]:
        e = rpc_error(s.FinishTrial, req, timeout=10)
        assert e.code() == code and fragment in e.details(), (req, e.details())
    e = rpc_error(s.ReportSteps, pb.ReportStepsRequest(trial_id=12345, steps=[pb.TrialStep(step=0, value=1.0)]),
                  timeout=10)
    assert e.code() == grpc.StatusCode.NOT_FOUND
