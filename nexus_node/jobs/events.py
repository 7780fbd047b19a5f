"""Live job events for WatchJob: a small publish/subscribe hub on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

from nexus_node.jobs.records import JobRecord

STATE_CHANGED, TRIAL_FINISHED, NEW_BEST, SNAPSHOT = "STATE_CHANGED", "TRIAL_FINISHED", "NEW_BEST", "SNAPSHOT"


@dataclass
class TrialView:
    number: int
    state: str
    value: float | None
    params: dict[str, Any] = field(default_factory=dict)
    duration_seconds: float = 0.0
    node_id: str = ""
    message: str = ""
    last_step: int = 0
    retry_of: int | None = None   # the trial whose parameters this one runs again


@dataclass
class JobEvent:
    kind: str
    job: JobRecord
    trial: TrialView | None = None


class EventHub:
    """Fan-out of job events. Subscribers get their own unbounded queue: events are small
    and a job produces at most a few per trial, so a slow watcher cannot stall a job."""

    def __init__(self) -> None:
        self._subs: dict[str, set[asyncio.Queue[JobEvent]]] = {}

    def publish(self, event: JobEvent) -> None:
        for q in self._subs.get(event.job.job_id, ()):
            q.put_nowait(event)

    @contextlib.contextmanager
    def subscribe(self, job_id: str) -> Iterator[asyncio.Queue[JobEvent]]:
        q: asyncio.Queue[JobEvent] = asyncio.Queue()
        self._subs.setdefault(job_id, set()).add(q)
        try:
            yield q
        finally:
            subs = self._subs.get(job_id)
            if subs is not None:
                subs.discard(q)
                if not subs:
                    del self._subs[job_id]
