"""The real :class:`~nexus_tui.client.ClusterClient`: ``NexusClient`` over gRPC."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, TypeVar

import grpc

from nexus_client.client import InputWarnings, NexusClient, OutsideRange, describe_error
from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_node._generated.nexus.v1 import nexus_pb2_grpc
from nexus_node.net import auth
from nexus_node.net.tls import client_tls
from nexus_tui.client import Predicted, RequestFailed, Unreachable

T = TypeVar("T")
# Codes that mean "the node is not there (now)": the app reconnects instead of showing an
# error. CANCELLED is what a stream ends with when we close the channel ourselves.
_GONE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as e:
        code = e.code() if callable(getattr(e, "code", None)) else None
        if code in _GONE:
            raise Unreachable(describe_error(e)) from e
        raise RequestFailed(describe_error(e)) from e


class GrpcClusterClient:
    """A dashboard client for one node.

    Args:
        address: ``HOST:PORT`` of the node.
        token: the cluster token (else the ``NexusClient`` defaults: env, token file).
        timeout: deadline of unary calls, short so a dead node is noticed quickly.
        tls_ca: the CA to check the node's certificate against (TLS); else ``NEXUS_TLS_CA``;
            plaintext when neither is set.
    """

    def __init__(self, address: str, token: str | None = None, timeout: float = 5.0,
                 tls_ca: str | None = None) -> None:
        self.address = address
        tls = client_tls(tls_ca)
        self._nexus = NexusClient(address, token=token, timeout=timeout, tls_ca=tls.ca_file if tls else "")
        # NexusClient has no WatchCluster call (it predates the RPC); a stub on a channel of
        # our own keeps this package off NexusClient's private fields.
        self._channel = auth.secure_channel(address, auth.client_token(token, None), tls)
        self._stub = nexus_pb2_grpc.NexusServiceStub(self._channel)
        self._calls: set[Any] = set()

    def cluster(self) -> pb.Cluster:
        with _translated():
            return self._nexus.cluster()

    def watch_cluster(self) -> Iterator[pb.Cluster]:
        with _translated():
            call = self._stub.WatchCluster(pb.WatchClusterRequest())
            self._calls.add(call)
            try:
                yield from call
            finally:
                self._calls.discard(call)
                call.cancel()
        # A watch never ends while the node serves; an end means the node went away.
        raise Unreachable(f"the cluster watch on {self.address} ended")

    def list_jobs(self) -> list[pb.Job]:
        with _translated():
            return self._nexus.list_jobs()

    def watch_job(self, job_id: str) -> Iterator[pb.JobEvent]:
        with _translated():
            yield from self._nexus.watch(job_id)

    def list_trials(self, job_id: str) -> list[pb.TrialInfo]:
        with _translated():
            return self._nexus.list_trials(job_id)

    def list_models(self) -> list[pb.Model]:
        with _translated():
            return self._nexus.list_models()

    def submit(
        self, path: str, target: str, *, use_case: str, max_trials: int, time_budget: float,
        constraints: dict[str, Any] | None,
    ) -> pb.Job:
        with _translated():
            return self._nexus.submit(
                path, target, use_case=use_case, max_trials=max_trials,
                time_budget=time_budget, constraints=constraints,
            )

    def cancel(self, job_id: str) -> pb.Job:
        with _translated():
            return self._nexus.cancel(job_id)

    def predict_to_csv(self, model_id: str, in_path: str, out_path: str) -> Predicted:
        unusual, outside = InputWarnings(), OutsideRange()
        with _translated():
            rows = self._nexus.predict_to_csv(model_id, in_path, out_path, outside=outside, warnings=unusual)
        return Predicted(rows, unusual.describe(), outside.describe(rows))

    def close(self) -> None:
        for call in list(self._calls):
            call.cancel()
        self._channel.close()
        self._nexus.close()
