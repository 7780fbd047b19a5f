"""NexusClient against the scripted fake node: what goes on the wire and what comes back."""

from __future__ import annotations

import hashlib
import io
import json
import socket

import grpc
import pytest

from nexus_client.client import (
    MAX_REWATCHES,
    ClientError,
    ExportIntegrityError,
    NexusClient,
    describe_error,
    split_address,
)
from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from tests.client.fake_node import ARTIFACT, PEOPLE_CSV, PEOPLE_ROWS, FakeNode


@pytest.fixture
def client(fake_node: FakeNode):
    with NexusClient(fake_node.address) as c:
        yield c


def test_submit_sends_the_spec_first_then_the_file_in_chunks(client, fake_node, csv_file):
    job = client.submit(
        csv_file, "charges", use_case="price it", max_trials=7, time_budget=12.5, metric="rmse",
        seed=3, constraints={"max_layers": 2}, drop_columns=["sex"], chunk_size=16,
    )
    got = fake_node.service.received
    assert job.job_id == "j1" and job.state == pb.PENDING
    spec = got.specs[0]
    assert (spec.target, spec.use_case, spec.max_trials, spec.time_budget_seconds) == ("charges", "price it", 7, 12.5)
    assert (spec.metric, spec.seed, spec.filename) == ("rmse", 3, "people.csv")
    assert json.loads(spec.constraints_json) == {"max_layers": 2}
    assert list(spec.drop_columns) == ["sex"]
    assert got.uploads[0] == csv_file.read_bytes()
    assert max(got.chunk_sizes) == 16 and len(got.chunk_sizes) == -(-len(PEOPLE_CSV) // 16)


def test_submit_without_constraints_sends_an_empty_constraints_field(client, fake_node, csv_file):
    client.submit(csv_file, "charges")
    assert fake_node.service.received.specs[0].constraints_json == ""


def test_a_refused_submit_raises_the_nodes_status(client, csv_file):
    with pytest.raises(grpc.RpcError) as err:
        client.submit(csv_file, "price")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert describe_error(err.value).startswith("INVALID_ARGUMENT: target column 'price'")


def test_a_missing_file_fails_before_anything_is_sent(client, fake_node, tmp_path):
    with pytest.raises(FileNotFoundError):
        client.submit(tmp_path / "nope.csv", "charges")
    assert fake_node.service.received.metadata == []


def test_unknown_job_is_not_found(client):
    with pytest.raises(grpc.RpcError) as err:
        client.get_job("nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert describe_error(err.value) == "NOT_FOUND: no job 'nope'"


def test_wait_reports_every_event_and_returns_the_final_job(client, csv_file):
    job = client.submit(csv_file, "charges")
    seen: list[tuple[int, int]] = []
    final = client.wait(job.job_id, on_event=lambda e: seen.append((e.kind, e.job.state)))
    assert seen == [
        (pb.SNAPSHOT, pb.PENDING), (pb.STATE_CHANGED, pb.SEARCHING),
        (pb.NEW_BEST, pb.SEARCHING), (pb.STATE_CHANGED, pb.COMPLETED),
    ]
    assert final.state == pb.COMPLETED and final.test_metrics["r2"] == pytest.approx(0.86)


def test_wait_gives_up_when_the_node_keeps_closing_the_watch(client, fake_node, csv_file):
    job = client.submit(csv_file, "charges")
    fake_node.service.close_watch_early = 1
    snapshots = []
    with pytest.raises(ClientError, match="keeps closing the watch"):
        client.wait(job.job_id, on_event=snapshots.append)
    assert len(snapshots) == MAX_REWATCHES + 1


def test_lists_cancel_trials_models_and_cluster(client, fake_node, csv_file):
    job = client.submit(csv_file, "charges")
    assert [j.job_id for j in client.list_jobs()] == [job.job_id]
    assert [t.state for t in client.list_trials(job.job_id)] == ["COMPLETE", "FAIL"]
    assert client.get_model(job.job_id).model_id == f"m-{job.job_id}"
    assert [m.job_id for m in client.list_models()] == [job.job_id]
    assert client.cluster().nodes[0].role == pb.COORDINATOR
    assert client.cancel(job.job_id).state == pb.CANCELLED
    assert fake_node.service.received.cancelled == [job.job_id]


def test_predict_regression_keeps_input_order_across_out_of_order_batches(client, fake_node, csv_file):
    job = client.submit(csv_file, "charges")
    fake_node.service.reverse_batches = True
    result = client.predict(job.job_id, csv_file)
    assert result.classes == []
    assert [r.value for r in result.rows] == [(20 + i) * 100 for i in range(PEOPLE_ROWS)]
    assert fake_node.service.received.predict_model_ids == [job.job_id]


def test_predict_classification_from_bytes_carries_probabilities(client, fake_node, csv_file):
    job = client.submit(csv_file, "charges")
    fake_node.service.classes = ["no", "yes"]
    result = client.predict(job.model_id or job.job_id, b"age\n30\n80\n")
    assert result.classes == ["no", "yes"]
    assert [r.label for r in result.rows] == ["no", "yes"]
    assert result.rows[1].probabilities == pytest.approx((0.2, 0.8))


def test_predict_to_csv_writes_one_row_per_input_row(client, fake_node, csv_file, tmp_path):
    job = client.submit(csv_file, "charges")
    fake_node.service.reverse_batches = True
    out = tmp_path / "pred.csv"
    assert client.predict_to_csv(job.job_id, csv_file, out) == PEOPLE_ROWS
    lines = out.read_text().splitlines()
    assert lines[0] == "prediction"
    assert lines[1:] == [f"{(20 + i) * 100}" for i in range(PEOPLE_ROWS)]


def test_predict_to_csv_adds_a_probability_column_per_class(client, fake_node, csv_file):
    job = client.submit(csv_file, "charges")
    fake_node.service.classes = ["no", "yes"]
    buf = io.StringIO()
    client.predict_to_csv(job.job_id, b"age\n30\n", buf)
    header, row = buf.getvalue().splitlines()
    assert header == "prediction,proba_no,proba_yes"
    label, p_no, p_yes = row.split(",")
    assert label == "no" and float(p_no) == pytest.approx(0.7) and float(p_yes) == pytest.approx(0.3)


def test_predict_with_a_missing_column_raises_invalid_argument(client, csv_file):
    job = client.submit(csv_file, "charges")
    with pytest.raises(grpc.RpcError) as err:
        client.predict(job.job_id, b"height\n1.8\n")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "age" in err.value.details()


def test_a_failed_predict_to_csv_leaves_no_file(client, csv_file, tmp_path):
    with pytest.raises(grpc.RpcError):
        client.predict_to_csv("no-such-model", csv_file, tmp_path / "pred.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["people.csv"]


def test_export_writes_the_artifact_and_returns_its_verified_hash(client, csv_file, tmp_path):
    job = client.submit(csv_file, "charges")
    out = tmp_path / "model.nexus"
    assert client.export(job.job_id, out) == hashlib.sha256(ARTIFACT).hexdigest()
    assert out.read_bytes() == ARTIFACT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.nexus", "people.csv"]


def test_export_that_does_not_verify_leaves_no_file(client, fake_node, csv_file, tmp_path):
    job = client.submit(csv_file, "charges")
    fake_node.service.corrupt_export = True
    out = tmp_path / "model.nexus"
    with pytest.raises(ExportIntegrityError, match="artifact mismatch"):
        client.export(job.job_id, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["people.csv"]


def test_the_token_travels_as_bearer_metadata(fake_node):
    with NexusClient(fake_node.address, token="s3cret") as c:
        c.list_jobs()
    assert fake_node.service.received.metadata[-1]["authorization"] == "Bearer s3cret"


def test_token_file_and_no_token(fake_node, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    with NexusClient(fake_node.address, token_file=str(token_file)) as c:
        c.list_jobs()
    with NexusClient(fake_node.address) as c:
        c.list_jobs()
    with_file, without = fake_node.service.received.metadata[-2:]
    assert with_file["authorization"] == "Bearer from-file"
    assert "authorization" not in without


def test_address_defaults_to_nexus_addr(fake_node, monkeypatch):
    monkeypatch.setenv("NEXUS_ADDR", fake_node.address)
    with NexusClient() as c:
        assert c.address == fake_node.address
        assert c.list_jobs() == []


def test_wait_ready(fake_node):
    with NexusClient(fake_node.address) as c:
        c.wait_ready(10)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"  # bound but not listening: refuses
        with NexusClient(closed) as c, pytest.raises(TimeoutError, match=closed):
            c.wait_ready(0.3)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_optuna_storage_points_at_the_node_with_the_token(fake_node):
    with NexusClient(fake_node.address, token="t0k") as c:
        storage = c.optuna_storage()
    host, port = split_address(fake_node.address)
    assert (storage._host, storage._port, storage._token) == (host, port, "t0k")


@pytest.mark.parametrize(
    ("address", "expected"),
    [("127.0.0.1:7070", ("127.0.0.1", 7070)), ("[::1]:80", ("[::1]", 80)), ("node-3:1", ("node-3", 1))],
)
def test_split_address(address, expected):
    assert split_address(address) == expected


@pytest.mark.parametrize("bad", ["nohost", ":7070", "host:", "host:http"])
def test_split_address_rejects(bad):
    with pytest.raises(ValueError):
        split_address(bad)


def test_describe_error_of_a_plain_exception():
    assert describe_error(ValueError("bad value")) == "bad value"
    assert describe_error(KeyError()) == "KeyError"
