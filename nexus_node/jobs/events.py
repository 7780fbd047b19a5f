"""Live job events for WatchJob: a small publish/subscribe hub on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Iterator

from nexus_node.jobs.records import JobRecord
from nexus_node.study.trials import TrialView

__all__ = ["JobEvent", "EventHub", "TrialView", "STATE_CHANGED", "TRIAL_FINISHED", "NEW_BEST", "SNAPSHOT"]

STATE_CHANGED, TRIAL_FINISHED, NEW_BEST, SNAPSHOT = "STATE_CHANGED", "TRIAL_FINISHED", "NEW_BEST", "SNAPSHOT"


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
