"""Raw gRPC helpers for node tests (the client library has its own tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import grpc

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node._generated.nexus.v1 import nexus_pb2_grpc
from nexus_node.net.auth import secure_channel
from nexus_node.net.tls import ClientTls

# Small searches keep the suite fast: a few short trials still exercise every stage.
FAST = '{"max_epochs": 15, "min_epochs": 5, "max_layers": 2, "widths": [32, 64]}'
TERMINAL = {pb.COMPLETED, pb.FAILED, pb.CANCELLED}


def stub(address: str, token: str | None = None, tls: ClientTls | None = None) -> nexus_pb2_grpc.NexusServiceStub:
    return nexus_pb2_grpc.NexusServiceStub(secure_channel(address, token, tls))


def submit_requests(spec: pb.JobSpec, data: bytes, chunk: int = 4096) -> Iterator[pb.SubmitJobRequest]:
    yield pb.SubmitJobRequest(spec=spec)
    for i in range(0, len(data), chunk):
        yield pb.SubmitJobRequest(chunk=data[i:i + chunk])


def submit(s, path: Path | bytes, target: str, **spec) -> pb.SubmitJobResponse:
    data = path if isinstance(path, bytes) else Path(path).read_bytes()
    spec.setdefault("constraints_json", FAST)
    return s.SubmitJob(submit_requests(pb.JobSpec(target=target, **spec), data), timeout=60)


def watch_until_end(s, job_id: str, timeout: float = 240) -> tuple[pb.Job, list[pb.JobEvent]]:
    events = list(s.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=timeout))
    return events[-1].job, events


def watch_until(s, job_id: str, predicate, timeout: float = 240) -> pb.JobEvent:
    for ev in s.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=timeout):
        if predicate(ev):
            return ev
    raise AssertionError("job ended before the awaited event")


def predict_requests(model_id: str, data: bytes, chunk: int = 4096) -> Iterator[pb.PredictRequest]:
    yield pb.PredictRequest(model_id=model_id)
    for i in range(0, len(data), chunk):
        yield pb.PredictRequest(chunk=data[i:i + chunk])


def predict(s, model_id: str, data: bytes) -> tuple[list[str], list[pb.Prediction]]:
    classes: list[str] = []
    preds: list[pb.Prediction] = []
    for resp in s.Predict(predict_requests(model_id, data), timeout=120):
        classes = classes or list(resp.classes)
        preds.extend(resp.predictions)
    return classes, preds


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:
    try:
        result = fn(*args, **kwargs)
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
    except grpc.RpcError as e:
        return e
    raise AssertionError("the call succeeded but an error was expected")


def nexus(address: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The ``nexus`` command line as a user runs it: a subprocess against ``address``."""
    env = {k: v for k, v in os.environ.items() if k != "NEXUS_TOKEN"}
    env["NEXUS_ADDR"] = address
    # No token from the developer's ~/.nexus: the test node is open on loopback.
    env["NEXUS_DATA_DIR"] = os.devnull
    return subprocess.run(
        [sys.executable, "-m", "nexus_client.cli", *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
