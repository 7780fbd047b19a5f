"""A scripted ``NexusService`` on a real gRPC server on loopback, for client and CLI tests
that must not depend on the node (the node's own tests drive the real one).

It speaks the real protocol over a real channel, records what it received, and answers
with jobs built by hand: a submitted job runs through a scripted sequence of watch events
to ``outcome``. Shared by ``tests/client`` and ``tests/cli``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node._generated.nexus.v1 import nexus_pb2_grpc

ARTIFACT = b"weights and preprocessing " * 5000
PEOPLE_ROWS = 6
PEOPLE_CSV = "age,sex,smoker,charges\n" + "".join(f"{20 + i},male,no,{1000 + i}\n" for i in range(PEOPLE_ROWS))


def finished_job(job_id: str, spec: pb.JobSpec, state: int = pb.COMPLETED) -> pb.Job:
    """A job as a node reports it at the end: metrics, importances, summary, constraints."""
    job = pb.Job(
        job_id=job_id, state=state, spec=spec, task=pb.REGRESSION, metric="r2", maximize=True,
        best_value=0.8512, has_best=True, model_id=f"m-{job_id}",
        trials=pb.TrialCounts(complete=2, pruned=1, fail=0),
        summary="Smoking status drives premiums more than anything else.",
        constraints_source="heuristic",
        constraints_json=json.dumps({"max_layers": 3, "rationale": "1338 rows: small network"}),
        profile_json=json.dumps({"rows": 1338}),
        created_at=1_700_000_000.0, started_at=1_700_000_001.0, finished_at=1_700_000_031.0,
        seed=42, encoding="utf-8", study_name=f"nexus-{job_id}",
        best_params_json=json.dumps({"layers": 2, "lr": 0.01}),
    )
    if state == pb.COMPLETED:
        job.test_metrics.update({"r2": 0.86, "rmse": 4500.5, "mae": 2500.25})
        job.feature_importance.extend([
            pb.FeatureImportance(column="smoker", importance=0.61),
            pb.FeatureImportance(column="age", importance=0.2),
            pb.FeatureImportance(column="region", importance=-0.01),
        ])
    else:
        job.message = "every trial failed: out of memory"
        job.ClearField("model_id")
    return job


@dataclass
class Received:
    """What the fake node was sent."""

    specs: list[pb.JobSpec] = field(default_factory=list)
    chunk_sizes: list[int] = field(default_factory=list)
    uploads: list[bytes] = field(default_factory=list)
    predict_model_ids: list[str] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)


class FakeNexus(nexus_pb2_grpc.NexusServiceServicer):
    """Knobs: ``outcome`` (final state of submitted jobs), ``classes`` (classification
    when set), ``predict_batch`` and ``reverse_batches`` (out-of-order predictions),
    ``corrupt_export``, ``close_watch_early`` (watches closed after the snapshot)."""

    def __init__(self) -> None:
        self.received = Received()
        self.jobs: dict[str, pb.Job] = {}
        self.events: dict[str, list[pb.JobEvent]] = {}
        self.outcome = pb.COMPLETED
        self.classes: list[str] = []
        self.predict_batch = 2
        self.reverse_batches = False
        self.corrupt_export = False
        self.close_watch_early = 0
        self._lock = threading.Lock()

    def _record(self, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.received.metadata.append({k: v for k, v in context.invocation_metadata()})

    def SubmitJob(self, request_iterator, context):
        self._record(context)
        first = next(request_iterator)
        if first.WhichOneof("payload") != "spec":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be the job spec")
        data = bytearray()
        for msg in request_iterator:
            self.received.chunk_sizes.append(len(msg.chunk))
            data += msg.chunk
        self.received.specs.append(first.spec)
        self.received.uploads.append(bytes(data))
        header = data.split(b"\n", 1)[0].decode().strip().split(",")
        if first.spec.target not in header:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"target column {first.spec.target!r} is not in the CSV header {header}")
        job_id = f"j{len(self.jobs) + 1}"
        self.add_job(finished_job(job_id, first.spec, self.outcome))
        return pb.SubmitJobResponse(job_id=job_id, job=self.events[job_id][0].job)

    def add_job(self, final: pb.Job) -> None:
        """Register a job with a scripted run: pending, searching with a new best, final."""
        pending = pb.Job(job_id=final.job_id, state=pb.PENDING, spec=final.spec, created_at=final.created_at)
        searching = pb.Job(job_id=final.job_id, state=pb.SEARCHING, spec=final.spec, metric="r2",
                           started_at=final.started_at, best_value=0.8, has_best=True,
                           trials=pb.TrialCounts(complete=1, running=1))
        trial = pb.TrialInfo(number=0, state="COMPLETE", value=0.8, has_value=True)
        self.jobs[final.job_id] = final
        self.events[final.job_id] = [
            pb.JobEvent(kind=pb.SNAPSHOT, job=pending),
            pb.JobEvent(kind=pb.STATE_CHANGED, job=searching),
            pb.JobEvent(kind=pb.NEW_BEST, job=searching, trial=trial),
            pb.JobEvent(kind=pb.STATE_CHANGED, job=final),
        ]

    def _job(self, job_id: str, context) -> pb.Job:
        if job_id not in self.jobs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {job_id!r}")
        return self.jobs[job_id]

    def GetJob(self, request, context):
        self._record(context)
        if self.close_watch_early:
            # A job that still runs while watches keep closing.
            job = pb.Job()
            job.CopyFrom(self._job(request.job_id, context))
            job.state = pb.SEARCHING
            return job
        return self._job(request.job_id, context)

    def ListJobs(self, request, context):
        self._record(context)
        return pb.ListJobsResponse(jobs=list(self.jobs.values()))

    def CancelJob(self, request, context):
        self._record(context)
        job = self._job(request.job_id, context)
        self.received.cancelled.append(request.job_id)
        job.state = pb.CANCELLED
        return job

    def WatchJob(self, request, context) -> Iterator[pb.JobEvent]:
        self._record(context)
        self._job(request.job_id, context)
        events = self.events[request.job_id]
        if self.close_watch_early:
            yield events[0]
            return
        yield from events

    def ListTrials(self, request, context):
        self._record(context)
        self._job(request.job_id, context)
        return pb.ListTrialsResponse(trials=[
            pb.TrialInfo(number=0, state="COMPLETE", value=0.8, has_value=True, params_json='{"lr": 0.01}',
                         duration_seconds=1.5, last_step=20, node_id="n1"),
            pb.TrialInfo(number=1, state="FAIL", message="out of memory"),
        ])

    def _model(self, key: str, context) -> pb.Model:
        for job in self.jobs.values():
            if key in (job.job_id, job.model_id) and job.model_id:
                return pb.Model(
                    model_id=job.model_id, job_id=job.job_id, task=pb.REGRESSION, target=job.spec.target,
                    input_columns=["age", "smoker"], test_metrics=dict(job.test_metrics),
                    artifact_sha256=hashlib.sha256(ARTIFACT).hexdigest(), artifact_bytes=len(ARTIFACT),
                    created_at=job.finished_at, family="mlp", params_json='{"layers": 2}',
                )
        context.abort(grpc.StatusCode.NOT_FOUND, f"no model or job {key!r}")

    def ListModels(self, request, context):
        self._record(context)
        return pb.ListModelsResponse(models=[self._model(j.job_id, context) for j in self.jobs.values() if j.model_id])

    def GetModel(self, request, context):
        self._record(context)
        return self._model(request.model_id, context)

    def Predict(self, request_iterator, context):
        self._record(context)
        first = next(request_iterator)
        self.received.predict_model_ids.append(first.model_id)
        self._model(first.model_id, context)
        data = b"".join(m.chunk for m in request_iterator)
        rows = list(csv.DictReader(io.StringIO(data.decode())))
        if rows and "age" not in rows[0]:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "input is missing training column 'age'")
        preds = []
        for i, row in enumerate(rows):
            age = float(row["age"])
            if self.classes:
                p = min(0.99, age / 100)
                preds.append(pb.Prediction(row=i, label=self.classes[int(p > 0.5)], value=float(p > 0.5),
                                           probabilities=[1 - p, p]))
            else:
                preds.append(pb.Prediction(row=i, label=f"{age * 100:g}", value=age * 100))
        batches = [preds[i : i + self.predict_batch] for i in range(0, len(preds), self.predict_batch)]
        if self.reverse_batches:
            batches.reverse()
        yield pb.PredictResponse(classes=self.classes)
        for b in batches:
            yield pb.PredictResponse(predictions=b)

    def ExportModel(self, request, context):
        self._record(context)
        model = self._model(request.model_id, context)
        data = ARTIFACT[:-1] + b"X" if self.corrupt_export else ARTIFACT
        step = 40_000
        for i in range(0, len(data), step):
            first = i == 0
            yield pb.ExportModelChunk(
                data=data[i : i + step],
                sha256=model.artifact_sha256 if first else "",
                total_bytes=len(ARTIFACT) if first else 0,
            )

    def GetCluster(self, request, context):
        self._record(context)
        return pb.Cluster(cluster_name="lab", coordinator_id="n1", term=3, nodes=[
            pb.NodeInfo(node_id="n1", address="127.0.0.1:7070", role=pb.COORDINATOR, term=3,
                        last_contact=time.time(), slots_total=2, slots_busy=1,
                        memory_total_bytes=8 << 30, memory_free_bytes=3 << 30, accelerator="cpu",
                        running=["j1/0"], version="0.1.0"),
        ])


class FakeNode:
    """A started server hosting :class:`FakeNexus`; ``address`` is ``127.0.0.1:PORT``."""

    def __init__(self) -> None:
        self.service = FakeNexus()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        nexus_pb2_grpc.add_NexusServiceServicer_to_server(self.service, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """No token or address leaks in from the developer's environment or ~/.nexus."""
    for name in ("NEXUS_TOKEN", "NEXUS_ADDR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NEXUS_DATA_DIR", str(tmp_path / "no-nexus-data-dir"))


@pytest.fixture
def csv_file(tmp_path) -> Path:
    """A small CSV (``PEOPLE_CSV``) whose fake predictions are ``age * 100``."""
    path = tmp_path / "people.csv"
    path.write_text(PEOPLE_CSV)
    return path


@pytest.fixture
def fake_node(clean_env) -> Iterator[FakeNode]:
    node = FakeNode()
    try:
        yield node
    finally:
        node.stop()
