"""A real node process on loopback: submit, watch, trials, models, predict, export, Optuna."""

from __future__ import annotations

import csv
import hashlib
import io
import json

import optuna
import pytest

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node.study.proxy import NexusStorageProxy
from tests.conftest import dataset
from tests.node.helpers import FAST, predict, stub, submit, watch_until_end


def test_regression_job_end_to_end(node_address, insurance_csv):
    s = stub(node_address)
    resp = submit(s, insurance_csv, "charges", use_case="price health insurance", max_trials=4, seed=7)
    assert resp.job.state == pb.PENDING and resp.job_id.startswith("job-")
    assert resp.job.encoding == "utf-8"

    job, events = watch_until_end(s, resp.job_id)
    assert job.state == pb.COMPLETED, job.message
    kinds = [e.kind for e in events]
    assert kinds[0] == pb.SNAPSHOT
    assert kinds.count(pb.TRIAL_FINISHED) == 4
    assert pb.NEW_BEST in kinds
    # The watch starts wherever the job is by then; from there every state change follows in order.
    seen = [events[0].job.state] + [e.job.state for e in events if e.kind == pb.STATE_CHANGED]
    lifecycle = [pb.PENDING, pb.PREPARING, pb.SEARCHING, pb.FINALIZING, pb.COMPLETED]
    start = lifecycle.index(seen[0])
    assert list(dict.fromkeys(seen)) == lifecycle[start:]

    assert job.task == pb.REGRESSION and job.metric == "r2" and job.maximize
    assert job.trials.complete + job.trials.pruned + job.trials.fail == 4
    assert job.trials.running == 0 and job.has_best
    assert set(job.test_metrics) >= {"r2", "rmse", "mae"}
    assert job.test_metrics["r2"] > 0.6
    # Scored on held-out rows by a train+validation fit; the served model saw every row.
    assert 0 < job.test_rows < job.evaluated_model_rows < job.final_model_rows == 1338
    assert job.evaluated_model_rows + job.test_rows == job.final_model_rows
    assert [f.column for f in job.feature_importance][0] == "smoker"
    assert "charges" in job.summary
    assert job.constraints_source == "user" and json.loads(job.constraints_json)["max_epochs"] == 15
    assert json.loads(job.profile_json)["rows"] == 1338

    trials = s.ListTrials(pb.ListTrialsRequest(job_id=job.job_id)).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.node_id == job.node_id and t.params_json for t in trials)

    model = s.GetModel(pb.GetModelRequest(model_id=job.job_id))
    assert model.model_id == job.model_id and model.target == "charges"
    # One model per job, even if finalisation is redone after a crash.
    assert job.model_id == "model-" + job.job_id.removeprefix("job-")
    assert "charges" not in model.input_columns and "smoker" in model.input_columns
    assert job.model_id in [m.model_id for m in s.ListModels(pb.ListModelsRequest()).models]

    data = insurance_csv.read_bytes()
    classes, preds = predict(s, job.model_id, data)
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    assert classes == [] and len(preds) == len(rows)
    assert [p.row for p in preds] == list(range(len(rows)))
    smokers = [p.value for p, r in zip(preds, rows) if r["smoker"] == "yes"]
    others = [p.value for p, r in zip(preds, rows) if r["smoker"] == "no"]
    assert sum(smokers) / len(smokers) > 2 * sum(others) / len(others)

    # A larger input streams back in several batches, still one prediction per row, in order.
    lines = data.decode().splitlines()
    big = "\n".join([lines[0]] + lines[1:] * 5) + "\n"
    _, many = predict(s, job.model_id, big.encode())
    assert [p.row for p in many] == list(range(5 * len(rows)))
    # The same row, the same prediction, whatever the batch around it (to float rounding: a
    # network's matrix products may split a larger batch differently).
    assert [p.value for p in many[len(rows):2 * len(rows)]] == pytest.approx([p.value for p in preds], rel=1e-6)

    blob = b""
    sha = ""
    for chunk in s.ExportModel(pb.ExportModelRequest(model_id=job.model_id)):
        sha = sha or chunk.sha256
        blob += chunk.data
    assert hashlib.sha256(blob).hexdigest() == sha == model.artifact_sha256
    assert blob[:2] == b"PK"   # a zip of JSON + weights, no pickle

    # Plain Optuna reads the job's study through the node's StorageService.
    host, port = node_address.rsplit(":", 1)
    study = optuna.load_study(study_name=job.study_name, storage=NexusStorageProxy(host=host, port=int(port)))
    assert len(study.trials) == 4
    assert study.best_value == job.best_value


def test_binary_job_with_probabilities(node_address):
    s = stub(node_address)
    titanic = dataset("titanic.csv")
    resp = submit(s, titanic, "Survived", max_trials=2, seed=3)
    job, _ = watch_until_end(s, resp.job_id)
    assert job.state == pb.COMPLETED, job.message
    assert job.task == pb.BINARY and job.metric == "roc_auc"
    assert job.test_metrics["roc_auc"] > 0.75
    assert {"accuracy", "f1", "roc_auc", "log_loss"} <= set(job.test_metrics)
    profile = json.loads(job.profile_json)
    dropped = {c["name"] for c in profile["columns"] if c["kind"] == "dropped"}
    assert "PassengerId" in dropped

    lines = titanic.read_text().splitlines()[:21]
    classes, preds = predict(s, job.model_id, "\n".join(lines).encode() + b"\n")
    assert len(classes) == 2 and len(preds) == 20
    for p in preds:
        assert abs(sum(p.probabilities) - 1) < 1e-4
        assert p.label in classes


def test_a_target_encoded_job_serves_new_categories(node_address):
    """A user keeps the target encoding of the high-cardinality columns (titles, authors):
    the trials train with it, the model serves with the mapping it stored, and a title or
    author nobody saw still gets a prediction."""
    s = stub(node_address)
    books = dataset("book_banning.csv")
    constraints = {**json.loads(FAST), "families": ["gbt"], "category_encodings": ["target"]}
    resp = submit(s, books, "removed", max_trials=2, seed=3, drop_columns=["rownames"],
                  constraints_json=json.dumps(constraints))
    job, _ = watch_until_end(s, resp.job_id)
    assert job.state == pb.COMPLETED, job.message
    assert {"title", "author"} <= set(json.loads(job.profile_json)["high_cardinality"])
    assert json.loads(job.best_params_json)["category_encoding"] == "target"
    assert all(json.loads(m.params_json)["category_encoding"] == "target" for m in job.members)
    assert job.test_metrics["roc_auc"] > 0.6
    # The file is Windows-1252: latin-1 carries its bytes through unchanged.
    header, row = list(csv.reader(io.StringIO(books.read_text(encoding="latin-1"))))[:2]
    title, author = header.index("title"), header.index("author")
    unseen = [[*row[:title], name, *row[title + 1:]] for name in ("A Book Nobody Wrote", "Another Unknown Book")]
    for r in unseen:
        r[author] = "Nobody, Anne"
    out = io.StringIO()
    csv.writer(out).writerows([header, row, *unseen])
    _, preds = predict(s, job.model_id, out.getvalue().encode("latin-1"))
    assert len(preds) == 3 and all(abs(sum(p.probabilities) - 1) < 1e-4 for p in preds)
    # Two titles nobody saw are encoded alike (as the prior), so the rows predict alike.
    assert list(preds[1].probabilities) == pytest.approx(list(preds[2].probabilities))


def test_watch_of_a_finished_job_returns_its_snapshot_and_ends(node_address, insurance_csv):
    s = stub(node_address)
    jobs = s.ListJobs(pb.ListJobsRequest()).jobs
    done = [j for j in jobs if j.state == pb.COMPLETED]
    if not done:
        resp = submit(s, insurance_csv, "charges", max_trials=1)
        watch_until_end(s, resp.job_id)
        done = [s.GetJob(pb.GetJobRequest(job_id=resp.job_id))]
    events = list(s.WatchJob(pb.WatchJobRequest(job_id=done[0].job_id), timeout=10))
    assert len(events) == 1 and events[0].kind == pb.SNAPSHOT
    assert events[0].job.state == pb.COMPLETED


def test_cluster_view_shows_this_node(node_address):
    c = stub(node_address).GetCluster(pb.GetClusterRequest())
    assert len(c.nodes) == 1
    n = c.nodes[0]
    assert n.role == pb.COORDINATOR and n.address == node_address and c.coordinator_id == n.node_id
    assert n.slots_total == 2 and n.memory_total_bytes > 0


def test_a_windows_1252_upload_is_read_and_says_so(node_address):
    s = stub(node_address)
    resp = submit(s, dataset("book_banning.csv"), "removed", max_trials=1)
    assert resp.job.encoding == "cp1252"
    assert "cp1252" in resp.job.message
    job = s.CancelJob(pb.CancelJobRequest(job_id=resp.job_id), timeout=60)
    assert job.state == pb.CANCELLED
