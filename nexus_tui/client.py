"""The dashboard's only view of a cluster: a small client interface.

Screens and workers call :class:`ClusterClient` and nothing else, so the app runs the same
against a real node (:class:`nexus_tui.grpc_client.GrpcClusterClient`) and against the
deterministic fake the tests and snapshots use (:class:`nexus_tui.fake_client.FakeClusterClient`).
Values are the ``nexus.v1`` protobuf messages the Python client already returns: they are
plain data, and converting each to a dataclass would only copy fields.

Every method blocks; the app calls them from thread workers, never on the event loop.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple, Protocol

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb


class Unreachable(ConnectionError):
    """The node cannot be reached (down, restarting, wrong address): try again or elsewhere."""


class RequestFailed(RuntimeError):
    """The node answered with an error meant for the user (bad input, unknown id)."""


class Predicted(NamedTuple):
    """What a prediction wrote: its rows, one line about the rows the model answered but knows
    little about (unseen categories, empty rows), and one about the rows whose numbers lie
    outside its training range; each empty when there are none."""

    rows: int
    warning: str = ""
    outside: str = ""


class ClusterClient(Protocol):
    """What the dashboard needs from a cluster. Implementations raise :class:`Unreachable`
    when the node is gone and :class:`RequestFailed` when it refuses a request."""

    address: str

    def cluster(self) -> pb.Cluster:
        """The cluster now (also the reachability probe)."""
        ...

    def watch_cluster(self) -> Iterator[pb.Cluster]:
        """The cluster now, then again on every change, until :meth:`close`."""
        ...

    def list_jobs(self) -> list[pb.Job]: ...

    def watch_job(self, job_id: str) -> Iterator[pb.JobEvent]:
        """A snapshot event, then the job's events; ends when the job ends."""
        ...

    def list_trials(self, job_id: str) -> list[pb.TrialInfo]: ...

    def list_models(self) -> list[pb.Model]: ...

    def submit(
        self, path: str, target: str, *, use_case: str, max_trials: int, time_budget: float,
        constraints: dict[str, Any] | None,
    ) -> pb.Job: ...

    def cancel(self, job_id: str) -> pb.Job: ...

    def predict_to_csv(self, model_id: str, in_path: str, out_path: str) -> Predicted:
        """Write predictions for every input row; returns the rows written and the node's warning."""
        ...

    def close(self) -> None:
        """Release the connection; blocked watches end."""
        ...


ClientFactory = Callable[[str], ClusterClient]
"""Builds a client for ``HOST:PORT`` without talking to it yet (the app reconnects with it)."""
