"""Optuna's ``GrpcStorageProxy`` with a token (or, in runners, the peer secret) attached.

Every node serves Optuna's own ``StorageService`` on its one port, so plain Optuna code
(and optuna-dashboard) can read a Nexus study::

    storage = NexusClient("host:7070").optuna_storage()
    study = optuna.load_study(study_name=job.study_name, storage=storage)
"""

from __future__ import annotations

import json
import warnings
from typing import Any, Mapping

import grpc
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import GrpcStorageProxy
from optuna.storages._grpc.auto_generated import api_pb2_grpc
from optuna.storages._grpc.client import GrpcClientCache

from nexus_node._generated.nexus.v1 import nexus_pb2, runner_pb2_grpc
from nexus_node.net.auth import secure_channel
from nexus_node.net.tls import ClientTls


class NexusStorageProxy(GrpcStorageProxy):
    """A ``GrpcStorageProxy`` whose channel carries ``authorization: Bearer <token>``, over
    TLS when ``tls`` is given."""

    def __init__(self, *, host: str, port: int, token: str | None = None, tls: ClientTls | None = None) -> None:
        self._token = token
        self._tls = tls
        self._missing: set[str] = set()   # RunnerService calls the server does not have
        with warnings.catch_warnings():
            # Optuna marks the proxy experimental; Nexus pins the Optuna version it tests.
            warnings.simplefilter("ignore", ExperimentalWarning)
            super().__init__(host=host, port=port)

    def _setup(self) -> None:
        # Overrides the parent's insecure, token-less channel; the rest of the proxy
        # (cache, retries, pickling for workers) is Optuna's own.
        self._channel = secure_channel(f"{self._host}:{self._port}", self._token, self._tls)
        self._stub = api_pb2_grpc.StorageServiceStub(self._channel)
        self._cache = GrpcClientCache(self._stub)

    def report_steps(self, trial_id: int, steps: list[tuple[int, float]]) -> bool:
        """Writes ``(step, value)`` pairs of a running trial in one call (the node's
        ``RunnerService.ReportSteps``: one journal append, one consensus round). False when the
        server is not a Nexus node (plain Optuna's proxy): report step by step instead.

        Raises:
            UpdateFinishedTrialError: the trial is finished (as ``Trial.report`` raises).
        """
        return self._nexus_call("ReportSteps", nexus_pb2.ReportStepsRequest(
            trial_id=trial_id, steps=[nexus_pb2.TrialStep(step=s, value=v) for s, v in steps])) is not None

    def finish_trial(self, trial_id: int, steps: list[tuple[int, float]], user_attrs: Mapping[str, Any],
                     state: str, value: float | None) -> tuple[str, float | None] | None:
        """Writes a trial's last steps, its user attributes and its final state in one call
        (the node's ``RunnerService.FinishTrial``: one journal append, one consensus round).
        Returns ``(state, value)`` as recorded; None when the server is not a Nexus node:
        write them one by one instead.

        Raises:
            UpdateFinishedTrialError: the trial is finished (as ``Study.tell`` finds it).
        """
        reply = self._nexus_call("FinishTrial", nexus_pb2.FinishTrialRequest(
            trial_id=trial_id, steps=[nexus_pb2.TrialStep(step=s, value=v) for s, v in steps],
            user_attrs_json=json.dumps(dict(user_attrs)), state=state, value=value or 0.0))
        if reply is None:
            return None
        return reply.state, reply.value if reply.has_value else None

    def _nexus_call(self, method: str, request: Any) -> Any:
        """One of the node's trial-writing calls (``RunnerService``: the node's own runners only, under
        the peer secret); None if the server does not have it (asked
        once per proxy: a plain Optuna server answers UNIMPLEMENTED every time)."""
        if method in self._missing:
            return None
        try:
            return getattr(runner_pb2_grpc.RunnerServiceStub(self._channel), method)(request, timeout=60)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # type: ignore[attr-defined]
                self._missing.add(method)
                return None
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:  # type: ignore[attr-defined]
                raise UpdateFinishedTrialError(exc.details()) from None  # type: ignore[attr-defined]
            raise
