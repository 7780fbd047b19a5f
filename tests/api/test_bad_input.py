"""Every bad input gets a status with a message that says what to fix; the node stays up
and nothing already stored changes."""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading

import grpc
import pandas as pd
import pytest

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node._generated.nexus.v1 import runner_pb2_grpc
from nexus_node.net.auth import secure_channel
from tests.conftest import free_port
from tests.node.helpers import predict_requests, rpc_error, stub, submit, submit_requests, watch_until_end

PARQUET = pd.DataFrame({"a": range(20), "b": range(20)}).to_parquet(index=False)   # no column y
GOOD = b"a,b,y\n" + b"".join(b"%d,%d,%d\n" % (i, i % 3, i * 2) for i in range(40))   # regression
CLASSES = b"a,b,y\n" + b"".join(b"%d,%d,%s\n" % (i, i % 3, b"yes" if i % 2 else b"no") for i in range(40))


@pytest.fixture(scope="module")
def small_node(tmp_path_factory):
    from tests.conftest import NodeProcess

    node = NodeProcess(tmp_path_factory.mktemp("bad") / "node", "--slots", "1", "--max-upload-mb", "1",
                       "--max-predict-mb", "1").start()
    yield node
    node.stop()


@pytest.mark.parametrize("data, target, code, fragment", [
    (b"", "y", grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "y", grpc.StatusCode.INVALID_ARGUMENT, "not a CSV"),
    (GOOD, "price", grpc.StatusCode.INVALID_ARGUMENT, "'price' is not in the CSV"),
    (b"a,b,y\n" + b"1,2,\n" * 30, "y", grpc.StatusCode.INVALID_ARGUMENT, "empty in every row"),
    (b"a,b,y\n1,2,3\n", "y", grpc.StatusCode.INVALID_ARGUMENT, "at least 10"),
    (b"a,y\n" + b"1,2\n" * 600_000, "y", grpc.StatusCode.RESOURCE_EXHAUSTED, "limit of 1 MiB"),
    # A gzip upload within the limit that decompresses past it (a zip bomb).
    (gzip.compress(b"a,y\n" + b"1,2\n" * 600_000), "y", grpc.StatusCode.RESOURCE_EXHAUSTED,
     "decompresses to more than this node's limit of 1 MiB (the node's --max-upload-mb)"),
    (b'[{"a": 1, "y": 2}]', "y", grpc.StatusCode.INVALID_ARGUMENT, "looks like JSON"),
    # Parquet is checked in the serve runner; its answer reaches the client the same way.
    (PARQUET, "y", grpc.StatusCode.INVALID_ARGUMENT, "target column 'y' is not in the Parquet file"),
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


def _id_calls(s, job_id: str, model_id: str) -> list:
    """Every RPC that names one job or one model, with those ids."""
    return [
        (s.GetJob, pb.GetJobRequest(job_id=job_id)),
        (s.CancelJob, pb.CancelJobRequest(job_id=job_id)),
        (s.ListTrials, pb.ListTrialsRequest(job_id=job_id)),
        (s.WatchJob, pb.WatchJobRequest(job_id=job_id)),
        (s.GetModel, pb.GetModelRequest(model_id=model_id)),
        (s.ExportModel, pb.ExportModelRequest(model_id=model_id)),
    ]


def test_unknown_ids(small_node):
    s = stub(small_node.address)
    for call, req in _id_calls(s, "job-nope", "model-nope"):
        e = rpc_error(call, req, timeout=10)
        assert e.code() == grpc.StatusCode.NOT_FOUND and "nope" in e.details()
    e = rpc_error(s.Predict, predict_requests("model-nope", GOOD), timeout=10)
    assert e.code() == grpc.StatusCode.NOT_FOUND


def test_empty_ids_are_invalid_arguments_not_unknown_ones(small_node):
    s = stub(small_node.address)
    for call, req in _id_calls(s, " ", ""):
        e = rpc_error(call, req, timeout=10)
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "is empty" in e.details(), (call, e.details())


def test_predict_input_missing_a_training_column(small_node):
    s = stub(small_node.address)
    # The largest seed: the trials' seeds (the job's plus the trial number) wrap inside the
    # range numpy and scikit-learn accept.
    resp = submit(s, GOOD, "y", max_trials=2, seed=2**32 - 1)
    job, _ = watch_until_end(s, resp.job_id)
    assert job.state == pb.COMPLETED, job.message
    # No more starting configurations are queued than the job may run: none is left waiting.
    assert (job.trials.complete + job.trials.pruned + job.trials.fail, job.trials.waiting) == (2, 0)
    e = rpc_error(s.Predict, predict_requests(job.model_id, b"a\n1\n2\n"), timeout=60)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'b'" in e.details()
    # extra columns are ignored, and the model still serves
    ok = list(s.Predict(predict_requests(job.model_id, b"b,a,extra\n1,2,x\n"), timeout=60))
    assert sum(len(r.predictions) for r in ok) == 1
    assert s.GetJob(pb.GetJobRequest(job_id=job.job_id)).state == pb.COMPLETED


def _completed_model(s) -> str:
    done = [j for j in s.ListJobs(pb.ListJobsRequest()).jobs if j.state == pb.COMPLETED]
    assert done, "test_predict_input_missing_a_training_column leaves a completed job"
    return done[0].model_id


def test_predict_input_with_text_in_a_numeric_column_names_the_column(small_node):
    s = stub(small_node.address)
    model = _completed_model(s)
    # (The model reads b only: a is a row number, dropped by the profile.)
    e = rpc_error(s.Predict, predict_requests(model, b"a,b\n3,1\n3,old\n3,xx\n"), timeout=60)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'b'" in e.details() and "'old' in row 2" in e.details() and "1 more" in e.details(), e.details()
    e = rpc_error(s.Predict, predict_requests(model, b"a,b\n3,inf\n"), timeout=60)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "'b'" in e.details(), e.details()
    # Empty cells and missing markers are missing values, not mistakes; so is any text in a
    # column the model does not read.
    ok = list(s.Predict(predict_requests(model, b"a,b\nx,\nNA,?\n"), timeout=60))
    assert sum(len(r.predictions) for r in ok) == 2


def test_predict_input_in_another_format_is_read_and_a_gzip_one_is_bounded(small_node):
    s = stub(small_node.address)
    model = _completed_model(s)
    rows = b"a,b\n1,2\n3,0\n"
    want = [p.value for r in s.Predict(predict_requests(model, rows), timeout=60) for p in r.predictions]
    for data in (gzip.compress(rows), rows.replace(b",", b"|"), ("\ufeff" + rows.decode()).encode("utf-16-le")):
        got = [p.value for r in s.Predict(predict_requests(model, data), timeout=60) for p in r.predictions]
        assert got == pytest.approx(want, rel=1e-6), data
    # 1.6 MB once decompressed, over the node's 1 MiB for prediction inputs.
    e = rpc_error(s.Predict, predict_requests(model, gzip.compress(b"a,b\n" + b"1,2\n" * 400_000)), timeout=60)
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.details()
    assert "decompresses to more than this node's limit of 1 MiB (the node's --max-predict-mb)" in e.details()
    e = rpc_error(s.Predict, predict_requests(model, b'{"a": 1, "b": 2}'), timeout=60)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "looks like JSON" in e.details(), e.details()
    assert s.GetModel(pb.GetModelRequest(model_id=model)).model_id == model   # the node serves on


def test_predictions_say_which_inputs_lie_outside_the_training_range_and_stay_in_the_target_band(small_node):
    s = stub(small_node.address)
    model = _completed_model(s)
    # Trained on b = 0..2 and y = 0..78.
    replies = list(s.Predict(predict_requests(model, b"a,b\n5,1\n5,9\n5,-1000000\n5,1000000\n"), timeout=60))
    rows = [p for r in replies for p in r.predictions]
    assert [list(p.outside_range) for p in rows] == [[], ["b"], ["b"], ["b"]]
    # However far the chosen model extrapolates, a value stays within 10% of the target's range.
    assert all(0.0 <= p.value <= 78 * 1.1 + 1e-6 for p in rows), [p.value for p in rows]


def test_cancel_of_a_finished_job_is_refused(small_node):
    s = stub(small_node.address)
    done = [j for j in s.ListJobs(pb.ListJobsRequest()).jobs if j.state == pb.COMPLETED]
    assert done, "test_predict_input_missing_a_training_column leaves a completed job"
    e = rpc_error(s.CancelJob, pb.CancelJobRequest(job_id=done[0].job_id), timeout=10)
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION and "already ended" in e.details()


def test_bad_trial_writes_from_trial_code(small_node):
    # The runners' own service (RunnerService); this node has no token, so no peer secret.
    s = runner_pb2_grpc.RunnerServiceStub(secure_channel(small_node.address, None))
    for req, code, fragment in [
        (pb.FinishTrialRequest(trial_id=12345, state="COMPLETE", value=1.0), grpc.StatusCode.NOT_FOUND, "12345"),
        (pb.FinishTrialRequest(trial_id=0, state="DONE"), grpc.StatusCode.INVALID_ARGUMENT, "one of COMPLETE"),
        (pb.FinishTrialRequest(trial_id=0, state="COMPLETE", value=float("nan")),
         grpc.StatusCode.INVALID_ARGUMENT, "a number"),
        (pb.FinishTrialRequest(trial_id=0, state="FAIL", user_attrs_json="[1]"),
         grpc.StatusCode.INVALID_ARGUMENT, "JSON object"),
        (pb.FinishTrialRequest(trial_id=0, state="FAIL", user_attrs_json="{"), grpc.StatusCode.INVALID_ARGUMENT, "not valid JSON"),
        (pb.FinishTrialRequest(trial_id=0, state="FAIL", user_attrs_json='{"a":' + "[" * 100_000),
         grpc.StatusCode.INVALID_ARGUMENT, "nest"),
    ]:
        e = rpc_error(s.FinishTrial, req, timeout=10)
        assert e.code() == code and fragment in e.details(), (req, e.details())
    e = rpc_error(s.ReportSteps, pb.ReportStepsRequest(trial_id=12345, steps=[pb.TrialStep(step=0, value=1.0)]),
                  timeout=10)
    assert e.code() == grpc.StatusCode.NOT_FOUND


def _stored(node) -> tuple[list, list]:
    s = stub(node.address)
    blobs = sorted(p.name for p in (node.data_dir / "blobs").rglob("*") if p.is_file() and "tmp" not in p.parts)
    return list(s.ListJobs(pb.ListJobsRequest()).jobs), blobs


DEEP = "[" * 10_000 + "]" * 10_000


@pytest.mark.parametrize("spec, data, fragment", [
    # seeds numpy, scikit-learn and torch accept
    (pb.JobSpec(target="y", seed=-1), GOOD, "seed -1 is out of range: use 0 to 4294967295"),
    (pb.JobSpec(target="y", seed=2**32), GOOD, "seed 4294967296 is out of range"),
    # constraints: depth, size and typed fields
    (pb.JobSpec(target="y", constraints_json="[" * 100_000), GOOD, "at most 65,536"),
    (pb.JobSpec(target="y", constraints_json=DEEP), GOOD, "nested 10000 levels deep; at most 8"),
    (pb.JobSpec(target="y", constraints_json='{"activations": [["relu"]]}'), GOOD,
     "'activations' must be a list of strings from ['relu', 'gelu', 'silu', 'tanh', 'leaky_relu']"),
    (pb.JobSpec(target="y", constraints_json='{"dropout": [0.2, NaN]}'), GOOD, "pair of finite numbers"),
    (pb.JobSpec(target="y", constraints_json='{"max_layers": -2}'), GOOD, "positive integer"),
    (pb.JobSpec(target="y", constraints_json='{"epochs": 3}'), GOOD, "allowed: ['activations'"),
    # the metric against the task the target defines
    (pb.JobSpec(target="y", metric="accuracy"), GOOD,
     "metric 'accuracy' does not fit target 'y', which makes this a regression job; choose one of "
     "['r2', 'rmse', 'mae']"),
    (pb.JobSpec(target="y", metric="rmse"), CLASSES,
     "which makes this a binary job; choose one of ['accuracy', 'f1', 'roc_auc', 'log_loss']"),
    # targets and columns preparation would refuse
    (pb.JobSpec(target="y"), b"a,y\n" + b"".join(b"%d,5\n" % i for i in range(20)), "same value (5) in every row"),
    (pb.JobSpec(target="y"), b"a,y\n" + b"".join(b"%d,c%d\n" % (i, i) for i in range(60)), "more than 50 distinct"),
    (pb.JobSpec(target="y"), b"a,a,y\n" + b"".join(b"%d,%d,%d\n" % (i, i, i) for i in range(20)),
     "repeats column names ['a']"),
    (pb.JobSpec(target="y", drop_columns=["a", "b"]), GOOD, "leaves no feature column"),
    # free text the job record carries to every node
    (pb.JobSpec(target="y", use_case="x" * 5_000), GOOD, "at most 2,000"),
    (pb.JobSpec(target="y", filename="f" * 2_000), GOOD, "file name is longer than 1,024"),
])
def test_specs_that_would_fail_later_are_refused_at_submit(small_node, spec, data, fragment):
    s = stub(small_node.address)
    before = _stored(small_node)
    e = rpc_error(s.SubmitJob, submit_requests(spec, data), timeout=60)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.details()
    assert fragment in e.details(), e.details()
    assert _stored(small_node) == before   # no job, no blob
    assert list((small_node.data_dir / "blobs" / "tmp").iterdir()) == []


def test_predict_over_its_limit_names_the_predict_flag(small_node):
    s = stub(small_node.address)
    e = rpc_error(s.Predict, predict_requests("model-nope", b"a,b\n" + b"1,2\n" * 400_000), timeout=60)
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-predict-mb" in e.details() and "--max-upload-mb" not in e.details()


@pytest.fixture(scope="module")
def idle_node(tmp_path_factory):
    from tests.conftest import NodeProcess

    node = NodeProcess(tmp_path_factory.mktemp("idle") / "node", "--slots", "1", "--upload-idle-s", "1").start()
    yield node
    node.stop()


def _held(first, release: threading.Event):
    """A request stream that sends its first message, then nothing until released."""
    yield first
    release.wait(60)


@pytest.mark.parametrize("first", [
    pb.SubmitJobRequest(spec=pb.JobSpec(target="y")),
    pb.PredictRequest(model_id="model-nope"),
])
def test_an_upload_stream_that_stalls_is_ended_and_its_file_removed(idle_node, first):
    s = stub(idle_node.address)
    before = _stored(idle_node)
    release = threading.Event()
    call = s.SubmitJob if isinstance(first, pb.SubmitJobRequest) else s.Predict
    try:
        e = rpc_error(call, _held(first, release), timeout=60)
    finally:
        release.set()
    assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e.details()
    assert "sent nothing for 1 s" in e.details() and "--upload-idle-s" in e.details()
    assert list((idle_node.data_dir / "blobs" / "tmp").iterdir()) == []
    assert _stored(idle_node) == before


def test_an_upload_that_keeps_sending_is_not_cut(idle_node):
    s = stub(idle_node.address)
    resp = s.SubmitJob(submit_requests(pb.JobSpec(target="y", max_trials=1), GOOD, chunk=64), timeout=60)
    assert resp.job_id
    s.CancelJob(pb.CancelJobRequest(job_id=resp.job_id), timeout=60)


def test_calls_during_start_up_answer_unavailable(tmp_path):
    """A new node told of a seed that never answers listens for its cluster for the whole
    --join-window: its server is up, its mesh is not. Every call then says it is starting."""
    port = free_port()
    data_dir = tmp_path / "starting"
    data_dir.mkdir()
    with open(tmp_path / "starting.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nexus_node.node.main", "--host", "127.0.0.1", "--port", str(port),
             "--data-dir", str(data_dir), "--no-mdns", "--seeds", f"127.0.0.1:{free_port()}",
             "--join-window", "3600"],
            stdout=subprocess.DEVNULL, stderr=log)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=60)   # the server serves; the mesh waits
        s = stub(f"127.0.0.1:{port}")
        for call, req in [
            (s.GetCluster, pb.GetClusterRequest()),
            (s.ListJobs, pb.ListJobsRequest()),
            (s.GetJob, pb.GetJobRequest(job_id="job-x")),
            (s.WatchCluster, pb.WatchClusterRequest()),
            (s.SubmitJob, submit_requests(pb.JobSpec(target="y"), GOOD)),
        ]:
            e = rpc_error(call, req, timeout=30)
            assert e.code() == grpc.StatusCode.UNAVAILABLE, (call, e.code(), e.details())
            assert "the node is starting" in e.details()
        # Health checks (load balancers, supervisors) are told the same.
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert proc.poll() is None
        assert "Traceback" not in (tmp_path / "starting.log").read_text()
        assert list((data_dir / "blobs" / "tmp").iterdir()) == []
    finally:
        proc.terminate()
        proc.wait(30)
