"""The work stream's messages as the dispatcher and the worker agent speak them.

Plain dataclasses: protobuf stops at the stream's two ends (:mod:`nexus_node.work.wire`
converts), so the coordinator's and the worker's logic is tested with these values alone.
The fields mirror ``nexus.v1`` ``WorkUp``/``WorkDown`` (proto/nexus/v1/peer.proto).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RunningTrial:
    """A trial a node runs, as its heartbeat names it: what a new coordinator needs to adopt
    the trial instead of running it again (:mod:`nexus_node.work.adoption`)."""

    lease_id: str
    study_name: str
    trial_number: int


@dataclasses.dataclass(frozen=True)
class Heartbeat:
    """A node's capacity and the leases it runs, sent every second."""

    term: int = 0                   # the newest consensus term the node has seen
    slots: int = 0
    task_memory_bytes: int = 0      # what its tasks may use when idle (slots x per-trial budget)
    memory_free_bytes: int = 0
    memory_total_bytes: int = 0
    cores: int = 0
    accelerator: str = ""
    running: tuple[str, ...] = ()   # leases whose tasks run there now
    trials: tuple[RunningTrial, ...] = ()   # those of them that run trials


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """A task's end: ``result_json`` on success, else the error's kind and message."""

    lease_id: str
    ok: bool
    result_json: bytes = b""
    error_kind: str = ""
    error_message: str = ""


@dataclasses.dataclass(frozen=True)
class WorkUp:
    """Node to coordinator: exactly one of ``heartbeat`` and ``result``."""

    cluster: str
    node_id: str
    heartbeat: Heartbeat | None = None
    result: TaskResult | None = None


@dataclasses.dataclass(frozen=True)
class Assignment:
    """Coordinator to node: run ``task_json`` under ``lease_id`` once the log is applied up to
    ``log_index``; refused if ``term`` is older than one the node has seen."""

    lease_id: str
    term: int
    task_json: bytes
    log_index: int = 0


@dataclasses.dataclass(frozen=True)
class CancelTask:
    lease_id: str
    reason: str = ""


#: Coordinator to node.
WorkDown = Assignment | CancelTask
