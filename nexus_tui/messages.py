"""Typed messages that workers post to the app (thread workers never touch widgets)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from nexus_node._generated.nexus.v1 import nexus_pb2 as pb
from nexus_tui.client import ClusterClient


@dataclass
class Connected(Message):
    client: ClusterClient
    cluster: pb.Cluster


@dataclass
class NoNodeReachable(Message):
    """The first connection failed; ``found`` lists nodes that mDNS knows."""

    address: str
    reason: str
    found: list[str]


@dataclass
class ConnectionLost(Message):
    address: str
    reason: str


@dataclass
class ClusterChanged(Message):
    cluster: pb.Cluster


@dataclass
class JobsLoaded(Message):
    jobs: list[pb.Job]


@dataclass
class JobEventReceived(Message):
    event: pb.JobEvent


@dataclass
class TrialsLoaded(Message):
    job_id: str
    trials: list[pb.TrialInfo]


@dataclass
class ModelsLoaded(Message):
    models: list[pb.Model]


@dataclass
class DataChanged(Message):
    """Posted to screens after the app's :class:`~nexus_tui.state.State` changed.

    ``what`` is "cluster", "jobs", "trials" or "models"; ``job_id`` names the job whose
    trials changed, and ``trial`` is the one new trial when only one arrived.
    """

    what: str
    job_id: str = ""
    trial: pb.TrialInfo | None = None
